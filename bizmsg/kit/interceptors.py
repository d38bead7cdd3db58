"""The server interceptor: request id, authentication, error mapping and one log line per call.

Health and reflection stay open (no token), so `grpcurl` / `buf curl` and load balancers
can use them. Every other call needs `authorization: Bearer <token>`.

A multiplexed stream (kit/multiplex.py) carries many calls of one unary method; it is
authenticated once when it opens, and `StreamItems` gives each item what a unary call gets
here: the principal, its own request id and deadline, one log line, and errors as the same
google.rpc.Status (`failure_status`, shared by both).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError

from bizmsg.kit import calls, logs
from bizmsg.kit.auth import Principal, TokenAuthority, set_current_principal
from bizmsg.kit.errors import (
    DeadlineExceeded,
    DomainError,
    Unauthenticated,
    Unavailable,
    internal_status,
)
from bizmsg.kit.ids import new_id

log = logging.getLogger("bizmsg.rpc")
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
T = TypeVar("T")


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key] = value
    return out


def _request_id(given: str) -> str:
    """The caller's request id when it is a sane one, else a fresh one."""
    return given if 0 < len(given) <= 128 and given.isprintable() else new_id()


def _bearer_token(authorization: str) -> str:
    """The token of an `authorization: Bearer <token>` header, or Unauthenticated."""
    if not authorization:
        raise Unauthenticated("TOKEN_MISSING", "authorization: Bearer <token> is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("TOKEN_MALFORMED", "authorization must be 'Bearer <token>'")
    return token.strip()


def failure_status(
    e: BaseException, *, domain: str, request_id: str, method: str, draining: bool
) -> status_pb2.Status:
    """The google.rpc.Status a caller gets for an exception, for unary calls and stream items."""
    if draining and not isinstance(e, DomainError):
        # Dependencies and pools close while draining; say so instead of INTERNAL.
        e = Unavailable("SHUTTING_DOWN", "the service is shutting down; retry", retry_after=1)
    elif isinstance(e, DBAPIError) and e.connection_invalidated:
        # The database went away under this call (restart, failover): nothing was
        # committed, and the pool has dropped the connection, so a retry can succeed.
        log.warning("database connection lost", extra={"fields": {"request_id": request_id}})
        e = Unavailable("DATABASE_UNAVAILABLE", "the database is unreachable; retry", retry_after=1)
    if isinstance(e, DomainError):
        if e.code == grpc.StatusCode.INTERNAL:  # never for a domain error, but be safe
            log.error("domain error mapped to INTERNAL", exc_info=e)
        return e.to_status(domain)
    log.error(
        "unexpected error",
        exc_info=e,
        extra={"fields": {"request_id": request_id, "method": method}},
    )
    return internal_status(request_id)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def status_code(status: status_pb2.Status) -> grpc.StatusCode:
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN)


def _log_call(
    service: str,
    method: str,
    principal: str,
    code: grpc.StatusCode,
    started: float,
    request_id: str,
    stream: str | None = None,
) -> None:
    fields = {
        "service": service,
        "method": method,
        "principal": principal,
        "code": code.name,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "request_id": request_id,
    }
    if stream is not None:
        fields["stream"] = stream  # the multiplexed stream that carried this call
    logs.info_fast(log, "rpc", fields)


class _Call:
    """Book-keeping for one incoming call."""

    def __init__(self, service: str, method: str, tokens: TokenAuthority, context: Any) -> None:
        self.service = service
        self.domain = f"{service}.bizmsg"
        self.method = method
        self.context = context
        self.started = time.perf_counter()
        md = _metadata(context)
        self.request_id = _request_id(md.get("x-request-id", ""))
        self.principal = "-"
        self.token = ""
        self.code = grpc.StatusCode.OK
        calls.enter(self.request_id, context.time_remaining())
        self.error: Unauthenticated | None = None
        try:
            self.token = _bearer_token(md.get("authorization", ""))
            p = tokens.verify(self.token)
        except Unauthenticated as e:
            self.error = e
            return
        self.principal = str(p)
        set_current_principal(p)

    async def fail(self, e: BaseException, draining: bool) -> None:
        status = failure_status(
            e, domain=self.domain, request_id=self.request_id, method=self.method, draining=draining
        )
        self.code = status_code(status)
        wire = rpc_status.to_status(status)
        await self.context.abort(
            wire.code,
            wire.details,
            trailing_metadata=(*wire.trailing_metadata, ("x-request-id", self.request_id)),
        )

    def done(self) -> None:
        code = self.code
        if code == grpc.StatusCode.OK:
            try:
                c = self.context.code()
                if c is not None:
                    code = c if isinstance(c, grpc.StatusCode) else grpc.StatusCode(c)
            except (AttributeError, ValueError, TypeError):
                pass
        _log_call(self.service, self.method, self.principal, code, self.started, self.request_id)


class StreamItems:
    """The items of one open multiplexed stream, each served as its unary method would be."""

    def __init__(self, call: _Call, tokens: TokenAuthority, interceptor: ServerInterceptor) -> None:
        self._call = call
        self._tokens = tokens
        self._interceptor = interceptor
        # "/pkg.Service/CheckConsentStream" -> "/pkg.Service/": items log their unary method.
        self._prefix = call.method.rpartition("/")[0] + "/"

    @property
    def draining(self) -> asyncio.Event:
        """Set when the server starts draining: stop reading, answer what was read, end."""
        return self._interceptor.drain_event

    async def run(
        self,
        method: str,
        request_id: str,
        seconds_left: float | None,
        work: Callable[[], Awaitable[T]],
    ) -> T | status_pb2.Status:
        """Runs one item (in its own task): its response, or the Status a unary call would fail
        with. `method` is the unary method's name; `seconds_left` what the caller had left."""
        path = self._prefix + method
        started = time.perf_counter()
        rid = _request_id(request_id)
        calls.enter(rid, seconds_left)
        principal = self._call.principal
        code = grpc.StatusCode.OK
        deadline = asyncio.timeout(seconds_left)
        try:
            # Verified when the stream opened; a cache hit now, but the token may have expired.
            p: Principal = self._tokens.verify(self._call.token)
            set_current_principal(p)
            async with deadline:
                return await work()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the stream went away; nobody to answer
            raise
        except grpc.aio.AbortError:
            raise  # a handler aborted the stream's context: that ends the whole stream
        except Exception as e:
            error: BaseException = e
            if isinstance(e, TimeoutError) and deadline.expired():
                error = DeadlineExceeded("DEADLINE_EXCEEDED", "the caller's deadline passed")
            status = failure_status(
                error,
                domain=self._call.domain,
                request_id=rid,
                method=path,
                draining=self._interceptor.draining,
            )
            code = status_code(status)
            return status
        finally:
            _log_call(self._call.service, path, principal, code, started, rid, self._call.method)


_stream_items: contextvars.ContextVar[StreamItems | None] = contextvars.ContextVar(
    "bizmsg_stream_items", default=None
)


def stream_items() -> StreamItems:
    """The open stream whose handler runs in this task (set by the interceptor)."""
    items = _stream_items.get()
    if items is None:
        raise RuntimeError("not inside a bidirectional stream served through ServerInterceptor")
    return items


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, service: str, tokens: TokenAuthority) -> None:
        self.service = service
        self.tokens = tokens
        # Open multiplexed streams wait on this to end cleanly when the server drains.
        self.drain_event = asyncio.Event()
        # Wrapped handlers by method, built once: grpc asks for a method's handler per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def draining(self) -> bool:
        return self.drain_event.is_set()

    @draining.setter
    def draining(self, value: bool) -> None:
        if value:
            self.drain_event.set()
        else:
            self.drain_event.clear()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(handler, method))
        return cached[1]

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler:
        service, tokens, interceptor = self.service, self.tokens, self
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: Any) -> Any:
                call = _Call(service, method, tokens, context)
                try:
                    if call.error is not None:
                        raise call.error
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    call.code = grpc.StatusCode.CANCELLED
                    raise
                except (grpc.aio.AbortError, KeyboardInterrupt):
                    raise
                except Exception as e:
                    await call.fail(e, interceptor.draining)
                finally:
                    call.done()

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return make(unary, **kwargs)

        behavior = handler.unary_stream or handler.stream_stream
        bidi = bool(handler.stream_stream)

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(service, method, tokens, context)
            try:
                if call.error is not None:
                    raise call.error
                if bidi:
                    _stream_items.set(StreamItems(call, tokens, interceptor))
                async for item in behavior(request, context):
                    yield item
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except (grpc.aio.AbortError, KeyboardInterrupt):
                raise
            except Exception as e:
                await call.fail(e, interceptor.draining)
            finally:
                call.done()

        make_stream = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make_stream(streaming, **kwargs)
