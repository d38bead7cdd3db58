"""Unary calls carried over one long-lived bidirectional stream, both ends.

Python gRPC pays most per unary call; a message on an already open stream costs far less. So
a service that calls another for every request (delivery: consent's CheckConsent and billing's
AuthorizeCharge per message) keeps one stream per dependency open and sends each call as an
item on it. The proto pairs each such unary method with a `<Method>Stream` method whose
request carries `items`, each wrapping one unary request (`correlation_id`,
`caller_request_id`, `timeout`, `request`), and whose response carries `answers`, each with
the same `correlation_id` and either the unary `response` or, in `error`, the
google.rpc.Status the unary call would have failed with. Both ends put everything waiting to
be written into one message: writes on a grpc.aio stream go one at a time, each costing about
what a small message does, so under load one write carries many calls.

- `StreamClient` (the caller): opens the stream lazily, numbers and writes each request (one
  writer, as grpc.aio allows no concurrent writes), resolves the caller when its answer comes,
  in any order, and gives each item the deadline a unary call would have; when a caller goes
  away, the server is told to cancel its item, as it would a unary call. A failed item raises
  the grpc.aio.AioRpcError the unary call would (status details in the trailing metadata, so
  errors.status_details works unchanged); a broken stream fails its pending items with
  UNAVAILABLE and the next call opens a new one. An item that provably never ran (the server
  drained and ended the stream without reading it, or the stream never opened) is sent again
  on a new stream, so a rolling restart of a dependency's replicas fails none of its calls.
  Streams are replaced when the service token is re-minted and every STREAM_MAX_AGE; a
  dependency without the stream method is called unary.
- `serve` (the servicer's stream method): says in its initial metadata that it accepted the
  stream (the client writes nothing before), reads items and runs each in its own task with
  the unary handler, through the interceptor's `StreamItems` (principal, request id, deadline,
  log line, error status), and writes the answers as they finish. When the server drains it
  stops reading, answers what it read and ends the stream with OK.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import status_pb2

from bizmsg.kit import calls
from bizmsg.kit.interceptors import status_code, stream_items
from bizmsg.kit.loop import gather_arrivals

if TYPE_CHECKING:
    from bizmsg.kit.server import Runtime

log = logging.getLogger("bizmsg.multiplex")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_co = TypeVar("Req_co", covariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)
Batch = TypeVar("Batch")

# Status details travel in this trailer on a unary call (grpcio-status reads it from there).
DETAILS_KEY = "grpc-status-details-bin"
# The server's initial metadata says it accepted the stream (authenticated, method known).
ACCEPTED_KEY = "bizmsg-stream-accepted"
# A stream is replaced after this long, so that behind a load balancer new streams (hence calls)
# spread over replicas as they come and go, as unary calls would.
STREAM_MAX_AGE = 60.0
# How many times an item that never ran (_Unsent) is sent again.
RESENDS = 2
# Loop turns a writer waits, while other items are in flight, so that more share its write
# (a message reaches each hop alone otherwise, and a stream write costs about what a unary call
# does: gRPC's batch, HTTP/2 framing, a syscall, a wake-up at the other end). Measured with
# `bizmsg bench --quick --only null,kit,send`, medians of alternated runs at c=64: 1.03-1.10
# items per write and kit pipeline / null 0.92 with one turn; 1.7-2.4 and 1.13 with 4;
# 1.20-1.37 with 8, where SendMessage's CPU per message fell by a fifth. With 16, once the
# savepoints had left group commit: SendMessage / null 0.75-0.81 against 0.60-0.76 with 8 (four
# alternated `--levels 64 --duration 8` runs each), CPU per message 0.93-0.99 ms against 1.10-1.41;
# 32 was not clearly better than 16 (three runs each).
# Since then the wait goes on while items keep coming (bizmsg.kit.loop.gather_arrivals): it ends
# once GATHER_TURNS turns in a row brought none, or after GATHER_MOST_TURNS. Under load items come
# in bursts with quiet turns between them, and a fixed count cut bursts in two: at c=128 this
# doubled the items per write (consent 3.8-4.1 to 8.7-10.4, billing 6.8-8.2 to 16-17.7) and
# the answers per write at both servers. Three alternated `--quick --only null,send --levels
# 16,64,128` pairs: CPU per message in all services at c=128 2.1, 2.1, 1.6 ms against 2.5, 2.3,
# 2.1, at c=16 2.6, 2.4, 2.6 against 3.1, 2.7, 3.1; c=1 and c=4 unchanged (nothing else in
# flight, no wait). Stopping after two quiet turns halved the items per write instead.
GATHER_TURNS = 16
GATHER_MOST_TURNS = 64


class StreamItem(Protocol[Req_co]):
    """`<Method>StreamItem`: one unary request and what the unary call carries around it."""

    @property
    def correlation_id(self) -> int: ...
    @property
    def caller_request_id(self) -> str: ...
    @property
    def timeout(self) -> duration_pb2.Duration: ...
    @property
    def request(self) -> Req_co: ...
    def HasField(self, field_name: Literal["timeout"]) -> bool: ...


class StreamAnswer(Protocol[Resp_co]):
    """`<Method>StreamAnswer`: the unary response, or the status it failed with."""

    @property
    def correlation_id(self) -> int: ...
    @property
    def response(self) -> Resp_co: ...
    @property
    def error(self) -> any_pb2.Any: ...
    def HasField(self, field_name: Literal["error"]) -> bool: ...


def rpc_error(
    code: grpc.StatusCode, details: str, status_bytes: bytes | None = None
) -> grpc.aio.AioRpcError:
    """The error a unary call would raise: code, details and (when given) the serialized
    google.rpc.Status in the trailing metadata."""
    trailing = (
        grpc.aio.Metadata()
        if status_bytes is None
        else grpc.aio.Metadata((DETAILS_KEY, status_bytes))
    )
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


class _Unsent(grpc.aio.AioRpcError):  # type: ignore[misc]
    """UNAVAILABLE for an item that provably never ran: the server ended the stream cleanly
    without reading it (it was draining), or the stream was never accepted (nothing was
    written). StreamClient sends such an item again on a new stream."""


def _expire(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


def error_from_status(packed: any_pb2.Any) -> grpc.aio.AioRpcError:
    """A stream answer's error (a google.rpc.Status packed in an Any) as the error the unary
    call would have raised, details included."""
    status = status_pb2.Status()
    packed.Unpack(status)
    return rpc_error(status_code(status), status.message, packed.value)


def _unsent(details: str) -> _Unsent:
    return _Unsent(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


# --- the caller's end ----------------------------------------------------------------------


class _Stream(Generic[Resp]):
    """One open stream: its writer queue, its reader task and the items awaiting answers."""

    def __init__(
        self,
        name: str,
        open_stream: Callable[..., Any],
        batch: Callable[[], Any],
        authorization: str,
    ) -> None:
        self.name = name
        self._batch = batch
        self.authorization = authorization
        self.opened = time.monotonic()
        self.accepting = True
        self.accepted = False
        self.pending: dict[int, asyncio.Future[Resp]] = {}
        # grpc.aio writes the iterator's items from one task of its own: writes never overlap,
        # and a caller cancelled while its item waits does not cancel the whole stream.
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.writer = self._requests()
        self.call = open_stream(self.writer, metadata=(("authorization", authorization),))
        self._reader = asyncio.create_task(self._read(), name=f"{name}-stream-reader")
        # The loop its items' answers are made on, kept: asyncio.get_running_loop() costs a
        # getpid() system call on Python 3.11, and every item would make one.
        self.loop = self._reader.get_loop()

    async def _requests(self) -> AsyncIterator[Any]:
        # Write nothing until the server has accepted the stream: a write racing its refusal
        # turns the refusal (UNAUTHENTICATED, UNIMPLEMENTED) into INTERNAL in grpc.aio. When it
        # refuses, this ends and the reader fails the pending items with the refusal.
        metadata = await self.call.initial_metadata()
        if not any(key == ACCEPTED_KEY for key, _ in metadata or ()):
            return
        self.accepted = True
        while (entry := await self._outbox.get()) is not None:
            if len(self.pending) > 1:  # others await answers: more may come to share the write
                await gather_arrivals(self._outbox.qsize, GATHER_TURNS, GATHER_MOST_TURNS)
            # Everything waiting goes in this one write.
            batch = self._batch()
            _add(batch, entry)
            while not self._outbox.empty():
                entry = self._outbox.get_nowait()
                if entry is None:
                    yield batch
                    return
                _add(batch, entry)
            yield batch

    def send(self, correlation_id: int, item: Any, answer: asyncio.Future[Resp]) -> None:
        self.pending[correlation_id] = answer
        self._outbox.put_nowait(item)

    def cancel(self, correlation_id: int) -> None:
        """The item's caller went away: the server is told to cancel it."""
        self._outbox.put_nowait(correlation_id)

    def retire(self) -> None:
        """Take no new items; the server answers those sent, then ends the stream."""
        if self.accepting:
            self.accepting = False
            self._outbox.put_nowait(None)

    async def _read(self) -> None:
        ended_with: grpc.aio.AioRpcError | None = None
        try:
            async for message in self.call:
                for answer in message.answers:
                    self._settle(answer)
        except grpc.aio.AioRpcError as e:
            ended_with = e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # not expected; the items must still be answered
            log.warning("stream reader failed", exc_info=e, extra={"fields": {"to": self.name}})
        finally:
            # Ends the writer too: left waiting on the outbox of a stream that broke, its
            # generator outlived the loop (a warning when a stopped service's loop closed).
            self.retire()
            pending, self.pending = self.pending, {}
            for waiting in pending.values():
                if not waiting.done():
                    waiting.set_exception(self._failure(ended_with))

    def _settle(self, answer: StreamAnswer[Resp]) -> None:
        waiting = self.pending.pop(answer.correlation_id, None)
        if waiting is None or waiting.done():
            return  # its caller gave up (deadline, cancellation)
        if answer.HasField("error"):
            waiting.set_exception(error_from_status(answer.error))
        else:
            waiting.set_result(answer.response)

    def _failure(self, ended_with: grpc.aio.AioRpcError | None) -> grpc.aio.AioRpcError:
        """What an item still pending when the stream ended fails with (a new error each)."""
        if ended_with is None:
            # A clean end answers every item the server read (serve): this one it never read.
            return _unsent(f"the {self.name} stream ended before its server read this call")
        code, details = ended_with.code(), ended_with.details()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED):
            # The token was refused (each item would have been, as a unary call), or the
            # dependency does not serve the stream (StreamClient falls back to unary calls).
            return grpc.aio.AioRpcError(
                code, ended_with.initial_metadata(), ended_with.trailing_metadata(), details
            )
        if not self.accepted:  # nothing was written on it
            return _unsent(f"the {self.name} stream failed before it opened ({code.name})")
        return rpc_error(
            grpc.StatusCode.UNAVAILABLE, f"the {self.name} stream broke ({code.name}: {details})"
        )

    async def close(self, grace: float) -> None:
        """Ends the stream: cleanly once pending items are answered, else cancelled after
        `grace` seconds (its pending items then fail UNAVAILABLE)."""
        self.retire()
        await asyncio.wait({self._reader}, timeout=grace)
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _add(batch: Any, entry: Any) -> None:
    """An outbox entry into the message being written: an item, or (an int) the
    correlation_id of an item to cancel."""
    if isinstance(entry, int):
        batch.cancel.append(entry)
    else:
        batch.items.append(entry)


class StreamClient(Generic[Req, Resp]):
    """Calls one unary method of a dependency as items on a long-lived stream.

    `open_stream` is the stub's `<Method>Stream`, `wrap` its item type (called with the four
    fields), `batch` its request type (holding items), `authorization` gives the current
    `Bearer` header (a stream opened with an older one is replaced), `call_timeout` the
    default deadline of a call. `unary` is the stub's unary method: used instead for a while
    when the dependency answers UNIMPLEMENTED for the stream (a version without it, e.g.
    during a rolling upgrade).
    """

    def __init__(
        self,
        name: str,
        open_stream: Callable[..., Any],
        wrap: Callable[..., Any],
        *,
        batch: Callable[[], Any],
        authorization: Callable[[], str],
        call_timeout: float,
        unary: Callable[[Req], Awaitable[Resp]] | None = None,
        max_age: float = STREAM_MAX_AGE,
    ) -> None:
        self._name = name
        self._open = open_stream
        self._wrap = wrap
        self._batch = batch
        self._unary = unary
        self._unary_until = 0.0  # monotonic time before which calls go unary
        self._authorization = authorization
        self._call_timeout = call_timeout
        self._max_age = max_age
        self._ids = itertools.count(1)
        self._stream: _Stream[Resp] | None = None
        self._closed = False

    def _current(self) -> _Stream[Resp]:
        stream = self._stream
        header = self._authorization()
        if (
            stream is not None
            and stream.accepting
            and stream.authorization == header
            and time.monotonic() - stream.opened < self._max_age
        ):
            return stream
        if stream is not None:
            stream.retire()
        self._stream = _Stream(self._name, self._open, self._batch, header)
        return self._stream

    async def call(self, request: Req) -> Resp:
        """What the unary call would return, or the grpc.aio.AioRpcError it would raise."""
        if self._closed:
            return await self._after_close(request)
        if self._unary is not None and time.monotonic() < self._unary_until:
            return await self._unary(request)
        try:
            return await self._call_on_stream(request)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED or self._unary is None:
                raise
        # No unary method of ours answers UNIMPLEMENTED: the dependency lacks the stream.
        log.warning(
            "dependency serves no stream; calling it unary",
            extra={"fields": {"to": self._name, "retry_stream_after_s": self._max_age}},
        )
        self._unary_until = time.monotonic() + self._max_age
        return await self._unary(request)

    async def _call_on_stream(self, request: Req) -> Resp:
        # The same deadline a unary call gets: what the incoming call has left, at most the
        # default (clients.OutgoingInterceptor).
        timeout = self._call_timeout
        remaining = calls.time_remaining()
        if remaining is not None:
            timeout = max(0.001, min(timeout, remaining))
        deadline = time.monotonic() + timeout
        for _ in range(RESENDS):
            try:
                return await self._send(request, seconds=timeout)
            except _Unsent:
                # It never ran (a replica drained, say): again on a new stream, which the
                # channel opens on a replica that serves, while the deadline allows.
                if self._closed:
                    return await self._after_close(request)
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise
        return await self._send(request, seconds=timeout)

    async def _send(self, request: Req, *, seconds: float) -> Resp:
        """One attempt: the item on the current stream, answered within `seconds`."""
        correlation_id = next(self._ids)
        item = self._wrap(
            correlation_id=correlation_id,
            caller_request_id=calls.current_request_id(),
            timeout=_duration(seconds),
            request=request,
        )
        stream = self._current()
        loop = stream.loop
        answer: asyncio.Future[Resp] = loop.create_future()
        stream.send(correlation_id, item, answer)
        # The deadline as a timer on the answer itself: asyncio.wait_for would add a future,
        # callbacks and a cancellation round per call.
        timer = loop.call_later(seconds, _expire, answer)
        try:
            return await answer
        except asyncio.CancelledError:
            if answer.cancelled():  # the caller went away before the answer came
                stream.cancel(correlation_id)  # as a unary call's cancellation reaches its server
            raise
        except TimeoutError:
            if not stream.accepted:
                # The server never even accepted the stream: drop it (its other items go
                # again on a new one).
                stream.accepting = False
                stream.call.cancel()
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            timer.cancel()
            stream.pending.pop(correlation_id, None)

    async def close(self, grace: float = 1.0) -> None:
        """Ends the stream once its pending calls are answered (within `grace`). No stream is
        opened after this: later calls, and items the closing stream gave back unread, go
        unary (or fail UNAVAILABLE without a unary method)."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close(grace)

    async def _after_close(self, request: Req) -> Resp:
        if self._unary is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"the stream to {self._name} is closed")
        return await self._unary(request)


def open_for(
    runtime: Runtime,
    dependency: str,
    open_stream: Callable[..., Any],
    wrap: Callable[..., Any],
    *,
    batch: Callable[[], Any],
    unary: Callable[[Req], Awaitable[Resp]],
) -> StreamClient[Req, Resp] | None:
    """A StreamClient to one of the service's dependencies, with the runtime's token and
    default deadline, ended when the service stops; None when BIZMSG_INTERNAL_STREAMS=0 (the
    caller then calls `unary` itself)."""
    if not runtime.settings.internal_streams:
        return None
    client = StreamClient(
        dependency,
        open_stream,
        wrap,
        batch=batch,
        authorization=runtime.channels.authorization,
        call_timeout=runtime.settings.call_timeout,
        unary=unary,
    )
    runtime.on_shutdown(client.close)
    return client


# --- the server's end ----------------------------------------------------------------------


async def _until_set(work: Awaitable[None], event: asyncio.Event) -> None:
    """Runs `work` until it ends or `event` is set, whichever comes first."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()  # a failed read fails the stream


async def serve(
    requests: AsyncIterator[Any],
    context: Any,
    method: str,
    handler: Callable[[Any, Any], Awaitable[Any]],
    response_type: Callable[[], Batch],
) -> AsyncIterator[Batch]:
    """The body of a `<Method>Stream` servicer method: every item read from `requests` runs
    `handler` (the servicer's unary method named `method`) in its own task, as that unary call
    would run; the answers ready when the stream is free to write go out in one response.
    Handlers raise, never abort."""
    items = stream_items()
    await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))  # StreamClient writes now
    # (correlation_id, response or failure status); None ends the stream.
    answers: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()
    running: dict[int, asyncio.Task[None]] = {}  # by correlation_id

    async def answer(item: StreamItem[Any]) -> None:
        timeout = item.timeout.ToTimedelta().total_seconds() if item.HasField("timeout") else None
        result = await items.run(
            method, item.caller_request_id, timeout, lambda: handler(item.request, context)
        )
        answers.put_nowait((item.correlation_id, result))

    def done(correlation_id: int, task: asyncio.Task[None]) -> None:
        if running.get(correlation_id) is task:
            del running[correlation_id]

    async def read() -> None:
        async for message in requests:
            for item in message.items:
                task = asyncio.create_task(answer(item))
                running[item.correlation_id] = task
                task.add_done_callback(functools.partial(done, item.correlation_id))
            for correlation_id in message.cancel:
                # Its caller went away: cancelled as a unary handler is (logged CANCELLED,
                # nothing answered).
                if (cancelled := running.get(correlation_id)) is not None:
                    cancelled.cancel()

    async def read_then_finish() -> None:
        try:
            # Until the client stops writing, or the server drains.
            await _until_set(read(), items.draining)
            if running:  # nothing is added any more: wait for what was read
                await asyncio.wait(set(running.values()))
        finally:
            answers.put_nowait(None)

    def add(batch: Any, correlation_id: int, result: Any) -> None:
        if isinstance(result, status_pb2.Status):
            error = any_pb2.Any()
            error.Pack(result)
            batch.answers.add(correlation_id=correlation_id, error=error)
        else:
            batch.answers.add(correlation_id=correlation_id, response=result)

    reader = asyncio.create_task(read_then_finish())
    try:
        while (ready := await answers.get()) is not None:
            if len(running) > 1:  # other items are running: their answers may share the write
                await gather_arrivals(answers.qsize, GATHER_TURNS, GATHER_MOST_TURNS)
            batch = response_type()
            add(batch, *ready)
            finished = False
            while not answers.empty():
                more = answers.get_nowait()
                if more is None:
                    finished = True
                    break
                add(batch, *more)
            yield batch
            if finished:
                break
        await reader
    finally:
        reader.cancel()
        for task in list(running.values()):
            task.cancel()
