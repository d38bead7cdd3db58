"""kit/multiplex.py: unary calls carried as items on one long-lived bidirectional stream.

A stand-in ConsentService (CheckConsent does what business_id says; CheckConsentStream serves
it through multiplex.serve) runs in-process on the test's event loop, behind the kit's real
server and interceptor; the client side is multiplex.StreamClient, as delivery uses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit import calls, errors, multiplex
from bizmsg.kit.auth import current_principal
from bizmsg.kit.config import Settings
from bizmsg.kit.errors import error_info, status_details
from bizmsg.kit.processes import free_port
from bizmsg.kit.server import RunningService, Runtime, ServiceDefinition, start
from bizmsg.kit.testing import TEST_SECRET, token_for
from delivery_svc.dependencies import dependency_error

UNARY = "/bizmsg.consent.v1.ConsentService/CheckConsent"
STREAM = "/bizmsg.consent.v1.ConsentService/CheckConsentStream"


class FakeConsent(consent_pb2_grpc.ConsentServiceServicer):
    """CheckConsent driven by the request's business_id: "<verb>:<argument>"."""

    def __init__(self, name: str = "") -> None:
        self.name = name  # told by the "name" verb: which replica answered
        self.cancelled = 0
        self.messages_read = 0  # stream messages, each holding one or more items

    async def CheckConsent(self, request: pb.CheckConsentRequest, context: Any) -> Any:
        verb, _, arg = request.business_id.partition(":")
        if verb == "sleep":
            try:
                await asyncio.sleep(float(arg))
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        elif verb == "refuse":
            raise errors.FailedPrecondition(
                "NOT_NOW", "refused on purpose", violations=[("CONSENT", arg, "none")]
            )
        elif verb == "invalid":
            raise errors.InvalidArgument([("person_id", "is required")])
        elif verb == "broken":
            raise RuntimeError("secret internal detail")
        elif verb == "deny":
            if not current_principal().is_service("delivery"):
                raise errors.PermissionDenied(message=f"{current_principal()} may not check")
        elif verb == "name":
            return pb.CheckConsentResponse(consent_id=self.name)
        elif verb == "whoami":
            left = calls.time_remaining()
            return pb.CheckConsentResponse(
                consent_id=f"{current_principal()}|{calls.current_request_id()}",
                consent_version=-1 if left is None else int(left * 1000),
            )
        return pb.CheckConsentResponse(allowed=True, consent_id=request.person_id)

    def CheckConsentStream(
        self, request_iterator: AsyncIterator[pb.CheckConsentStreamRequest], context: Any
    ) -> AsyncIterator[pb.CheckConsentStreamResponse]:
        async def counted() -> AsyncIterator[pb.CheckConsentStreamRequest]:
            async for message in request_iterator:
                self.messages_read += 1
                yield message

        return multiplex.serve(
            counted(),
            context,
            "CheckConsent",
            self.CheckConsent,
            pb.CheckConsentStreamResponse,
        )


def add_unary_only(servicer: FakeConsent, server: grpc.aio.Server) -> None:
    """An older ConsentService: CheckConsent, and no CheckConsentStream."""
    check = grpc.unary_unary_rpc_method_handler(
        servicer.CheckConsent,
        request_deserializer=pb.CheckConsentRequest.FromString,
        response_serializer=pb.CheckConsentResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bizmsg.consent.v1.ConsentService", {"CheckConsent": check}
            ),
        )
    )


def definition(servicer: FakeConsent, streams: bool) -> ServiceDefinition:
    async def build(runtime: Runtime) -> FakeConsent:
        return servicer

    return ServiceDefinition(
        name="consent",
        service_name="bizmsg.consent.v1.ConsentService",
        add_servicer=(
            consent_pb2_grpc.add_ConsentServiceServicer_to_server if streams else add_unary_only
        ),
        build=build,
    )


def bearer(principal: str) -> str:
    return f"Bearer {token_for(principal)}"


class Harness:
    """The fake service on a fixed port (so it can come back) and a StreamClient to it."""

    def __init__(
        self, tmp: Path, principal: str = "service:delivery", streams: bool = True
    ) -> None:
        self.servicer = FakeConsent()
        self.streams = streams
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.settings = Settings(
            {
                "BIZMSG_TOKEN_SECRET": TEST_SECRET,
                "BIZMSG_CONSENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/consent.db",
                "BIZMSG_DATA_DIR": str(tmp),
            }
        )
        self.header = bearer(principal)
        self.server: RunningService | None = None
        self.connect(self.target)

    def connect(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        """The channel, stub and StreamClient the test calls through, to `target`."""
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub = consent_pb2_grpc.ConsentServiceStub(self.channel)
        self.client = self.stream_client(
            unary=lambda request: self.stub.CheckConsent(
                request, metadata=[("authorization", self.header)]
            )
        )

    def stream_client(
        self, unary: Callable[[pb.CheckConsentRequest], Awaitable[pb.CheckConsentResponse]] | None
    ) -> multiplex.StreamClient[pb.CheckConsentRequest, pb.CheckConsentResponse]:
        return multiplex.StreamClient(
            "consent",
            self.stub.CheckConsentStream,
            pb.CheckConsentStreamItem,
            batch=pb.CheckConsentStreamRequest,
            authorization=lambda: self.header,
            call_timeout=5.0,
            unary=unary,
        )

    async def start(self) -> None:
        self.server = await start(
            definition(self.servicer, self.streams), self.settings, port=self.port
        )

    async def stop(self, grace: float | None) -> None:
        """Drains (grace) like SIGTERM, or (None) goes away at once like a crash."""
        assert self.server is not None
        server, self.server = self.server, None
        if grace is None:
            await server.server.stop(None)
            await server.runtime.close()
        else:
            await server.stop(grace)

    async def close(self) -> None:
        await self.client.close()
        await self.channel.close()
        if self.server is not None:
            await self.stop(0)

    async def check(self, business: str, person: str = "p") -> pb.CheckConsentResponse:
        return await self.client.call(
            pb.CheckConsentRequest(business_id=business, person_id=person)
        )

    def unary(self, business: str, request_id: str = "") -> Awaitable[pb.CheckConsentResponse]:
        md = [("authorization", self.header)]
        if request_id:
            md.append(("x-request-id", request_id))
        return self.stub.CheckConsent(  # type: ignore[no-any-return]
            pb.CheckConsentRequest(business_id=business, person_id="p"), metadata=md
        )


def run(tmp: Path, scenario: Callable[[Harness], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        h = Harness(tmp, **kw)
        await h.start()
        try:
            await scenario(h)
        finally:
            await h.close()

    asyncio.run(main())


def rpc_lines(caplog: pytest.LogCaptureFixture, method: str) -> list[dict[str, Any]]:
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "bizmsg.rpc" and getattr(r, "fields", {}).get("method") == method
    ]


async def raises(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e
    raise AssertionError("the call succeeded")


def test_items_run_concurrently_and_are_answered_out_of_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")
    finished: list[str] = []

    async def scenario(h: Harness) -> None:
        async def one(seconds: float, person: str) -> str:
            response = await h.check(f"sleep:{seconds}", person)
            finished.append(response.consent_id)
            return response.consent_id

        started = time.monotonic()
        got = await asyncio.gather(one(1.2, "slow"), one(0.6, "medium"), one(0, "fast"))
        elapsed = time.monotonic() - started
        assert got == ["slow", "medium", "fast"]  # each caller got its own answer
        assert finished == ["fast", "medium", "slow"]  # answered as they finished
        assert elapsed < 1.7, elapsed  # one after another would take 1.8 s

    run(tmp_path, scenario)
    # One stream carried all three; each item logged as a CheckConsent call of its own.
    streams = rpc_lines(caplog, STREAM)
    assert len(streams) == 1 and streams[0]["code"] == "OK", streams
    items = rpc_lines(caplog, UNARY)
    assert len(items) == 3 and {i["code"] for i in items} == {"OK"}
    assert all(i["stream"] == STREAM and i["principal"] == "service:delivery" for i in items)


def test_items_waiting_to_be_written_share_one_message(tmp_path: Path) -> None:
    """Calls made while the stream is busy writing go out together, and come back together."""

    async def scenario(h: Harness) -> None:
        got = await asyncio.gather(*(h.check(f"ok:{i}", person=f"p{i}") for i in range(60)))
        assert [r.consent_id for r in got] == [f"p{i}" for i in range(60)]
        assert 1 <= h.servicer.messages_read < 60

    run(tmp_path, scenario)


def test_request_id_principal_and_deadline_travel_with_each_item(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        async def as_incoming(
            request_id: str, seconds_left: float | None
        ) -> pb.CheckConsentResponse:
            calls.enter(request_id, seconds_left)  # what the server interceptor sets
            return await h.check("whoami")

        short, default = await asyncio.gather(
            asyncio.create_task(as_incoming("incoming-1", 0.8)),
            asyncio.create_task(as_incoming("incoming-2", None)),
        )
        assert short.consent_id == "service:delivery|incoming-1"
        assert 0 < short.consent_version <= 800  # ms left: the caller's, not the 5 s default
        assert default.consent_id == "service:delivery|incoming-2"
        assert 4000 < default.consent_version <= 5000  # the call timeout

    run(tmp_path, scenario)
    ids = sorted(i["request_id"] for i in rpc_lines(caplog, UNARY))
    assert ids == ["incoming-1", "incoming-2"]


@pytest.mark.parametrize("business", ["refuse:p", "invalid:", "broken:"])
def test_a_failed_item_raises_what_the_unary_call_raises(tmp_path: Path, business: str) -> None:
    async def scenario(h: Harness) -> None:
        unary = await raises(h.unary(business, request_id="same-id"))
        calls.enter("same-id", None)
        item = await raises(h.check(business))
        assert item.code() == unary.code()
        assert item.details() == unary.details()
        assert status_details(item) == status_details(unary)  # ErrorInfo, BadRequest, ...
        assert error_info(item) == error_info(unary) is not None
        # So delivery maps both alike.
        mapped, expected = dependency_error("consent", item), dependency_error("consent", unary)
        assert (mapped.code, mapped.reason, mapped.metadata) == (
            expected.code,
            expected.reason,
            expected.metadata,
        )
        # And the stream goes on.
        assert (await h.check("ok")).allowed

    run(tmp_path, scenario)


def test_an_items_deadline_fails_that_item_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        async def slow_with_little_time() -> grpc.aio.AioRpcError:
            calls.enter("in-a-hurry", 0.3)
            return await raises(h.check("sleep:5"))

        started = time.monotonic()
        late, fine = await asyncio.gather(slow_with_little_time(), h.check("sleep:0.5", "fine"))
        assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert fine.consent_id == "fine"
        assert time.monotonic() - started < 3
        # The server stopped the work at the same deadline.
        for _ in range(100):
            if h.servicer.cancelled:
                break
            await asyncio.sleep(0.05)
        assert h.servicer.cancelled == 1

    run(tmp_path, scenario)
    (line,) = [i for i in rpc_lines(caplog, UNARY) if i["request_id"] == "in-a-hurry"]
    assert line["code"] == "DEADLINE_EXCEEDED"


def test_the_server_answers_deadline_exceeded_for_an_item_past_its_timeout(
    tmp_path: Path,
) -> None:
    """On the wire: the item's own timeout, not the client's timer, ends it on the server."""

    async def scenario(h: Harness) -> None:
        def item(cid: int, business: str, seconds: float) -> pb.CheckConsentStreamRequest:
            timeout = duration_pb2.Duration()
            timeout.FromNanoseconds(int(seconds * 1e9))
            return pb.CheckConsentStreamRequest(
                items=[
                    pb.CheckConsentStreamItem(
                        correlation_id=cid,
                        caller_request_id=f"r{cid}",
                        timeout=timeout,
                        request=pb.CheckConsentRequest(business_id=business, person_id=f"p{cid}"),
                    )
                ]
            )

        async def items() -> AsyncIterator[pb.CheckConsentStreamRequest]:
            yield item(7, "sleep:5", 0.2)
            yield item(8, "ok", 5)

        stream = h.stub.CheckConsentStream(items(), metadata=[("authorization", h.header)])
        answers = {a.correlation_id: a async for message in stream for a in message.answers}
        assert answers[8].response.consent_id == "p8"
        status = status_pb2.Status()
        answers[7].error.Unpack(status)
        assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert await stream.code() == grpc.StatusCode.OK

    run(tmp_path, scenario)


def test_a_server_going_away_fails_pending_items_and_the_next_call_reconnects(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.check("ok", "before")).consent_id == "before"
        pending = [asyncio.create_task(raises(h.check("sleep:10"))) for _ in range(3)]
        await asyncio.sleep(0.3)  # written and running on the server
        broken = h.client._stream
        assert broken is not None
        started = time.monotonic()
        await h.stop(None)
        failed = await asyncio.gather(*pending)
        assert {e.code() for e in failed} == {grpc.StatusCode.UNAVAILABLE}
        assert time.monotonic() - started < 3  # not their 5 s deadline
        # Its writer ended with it: left waiting for items, it outlived the loop.
        await asyncio.sleep(0.1)
        assert broken.writer.ag_frame is None
        # While it is down, calls fail UNAVAILABLE as unary ones would.
        assert (await raises(h.check("ok"))).code() == grpc.StatusCode.UNAVAILABLE
        await h.start()
        deadline = time.monotonic() + 15
        while True:  # the channel may wait out a reconnect backoff first
            try:
                assert (await h.check("ok", "after")).consent_id == "after"
                break
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "did not reconnect"
                await asyncio.sleep(0.2)

    run(tmp_path, scenario)


def test_draining_answers_what_was_read_and_ends_the_stream_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        in_flight = asyncio.create_task(h.check("sleep:0.6", "in-flight"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await h.stop(grace=10)
        # The stream did not hold the shutdown for the grace period, and its item was answered.
        assert time.monotonic() - started < 5
        assert (await in_flight).consent_id == "in-flight"
        await h.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                assert (await h.check("ok", "after")).consent_id == "after"
                break
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "did not reconnect"
                await asyncio.sleep(0.2)

    run(tmp_path, scenario)
    assert rpc_lines(caplog, STREAM)[0]["code"] == "OK"


def test_an_item_a_draining_replica_did_not_read_goes_to_another(tmp_path: Path) -> None:
    """A rolling restart: the replica holding the stream drains while a call is in flight on
    it; an item written meanwhile is never read there, so when that replica ends the stream
    the item goes again on a new stream, which the channel opens on the other replica."""

    async def main() -> None:
        replicas = {name: Harness(tmp_path / name) for name in ("a", "b")}
        for name, h in replicas.items():
            (tmp_path / name).mkdir()
            h.servicer.name = name
            await h.start()
        targets = ",".join(h.target for h in replicas.values())
        # One client over both replicas, as behind a load balancer.
        client = replicas["a"]
        await client.channel.close()
        client.connect(f"ipv4:{targets}", options=[("grpc.lb_policy_name", "round_robin")])
        try:
            holder = (await client.check("name")).consent_id  # the stream's replica
            other = "b" if holder == "a" else "a"
            in_flight = asyncio.create_task(client.check("sleep:0.8", "in-flight"))
            await asyncio.sleep(0.2)
            draining = asyncio.create_task(replicas[holder].stop(grace=10))
            await asyncio.sleep(0.2)  # the holder reads no more
            late = await client.check("name")
            assert late.consent_id == other
            assert (await in_flight).consent_id == "in-flight"  # answered before the end
            await draining
        finally:
            for h in replicas.values():
                await h.close()

    asyncio.run(main())


def test_a_caller_that_goes_away_cancels_its_item_on_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a unary call's cancellation reaches its handler: the item's handler is cancelled and
    logged CANCELLED, and the stream goes on serving."""
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        assert (await h.check("ok", "before")).consent_id == "before"  # the stream is open
        caller = asyncio.create_task(h.check("sleep:10", "gone"))
        await asyncio.sleep(0.3)  # written, and sleeping on the server
        caller.cancel()
        deadline = time.monotonic() + 3
        while h.servicer.cancelled == 0:
            assert time.monotonic() < deadline, "the server's handler was not cancelled"
            await asyncio.sleep(0.02)
        assert (await h.check("ok", "after")).consent_id == "after"  # same stream, still fine

    run(tmp_path, scenario)
    codes = [line["code"] for line in rpc_lines(caplog, UNARY)]
    assert "CANCELLED" in codes


def test_a_principal_refused_by_the_unary_method_is_refused_for_each_item(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        unary = await raises(h.unary("deny:"))
        item = await raises(h.check("deny:"))
        assert item.code() == unary.code() == grpc.StatusCode.PERMISSION_DENIED
        assert status_details(item) == status_details(unary)

    run(tmp_path, scenario, principal="business:b1")


def test_an_unauthenticated_stream_is_refused(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        answered = asyncio.Event()

        async def items() -> AsyncIterator[pb.CheckConsentStreamRequest]:
            # Nothing is written before the refusal: grpc.aio may turn a refusal that races a
            # write into INTERNAL (which is why StreamClient waits for the accept marker).
            await answered.wait()
            yield pb.CheckConsentStreamRequest(
                items=[
                    pb.CheckConsentStreamItem(correlation_id=1, request=pb.CheckConsentRequest())
                ]
            )

        stream = h.stub.CheckConsentStream(items())  # no token
        e = await raises(stream.read())
        answered.set()
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(e) == ("TOKEN_MISSING", {})
        # Through the client: its items fail as a unary call with a bad token would.
        h.header = "Bearer not-a-token"
        item = await raises(h.check("ok"))
        unary = await raises(h.unary("ok"))
        assert item.code() == unary.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(item) == error_info(unary)

    run(tmp_path, scenario)


def test_a_new_token_opens_a_new_stream(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Services re-mint their token well before it expires; a stream must not outlive it."""
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        await h.check("ok")
        h.header = bearer("service:delivery")  # re-minted
        h.header += " "  # a different header value even within the same second
        assert (await h.check("ok", "second")).consent_id == "second"
        for _ in range(100):  # the first stream, retired, ends once its items are answered
            if rpc_lines(caplog, STREAM):
                break
            await asyncio.sleep(0.05)
        assert [s["code"] for s in rpc_lines(caplog, STREAM)] == ["OK"]

    run(tmp_path, scenario)


def test_a_closed_client_opens_no_new_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At shutdown the client is closed before the channel: a call made after that (or an item
    the closing stream gave back unread) goes unary, and no stream is left open behind it."""
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        await h.check("ok", "before")
        await h.client.close()
        assert (await h.check("ok", "after")).consent_id == "after"
        no_unary = h.stream_client(unary=None)
        await no_unary.close()
        refused = await raises(no_unary.call(pb.CheckConsentRequest(business_id="ok")))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE

    run(tmp_path, scenario)
    assert [s["code"] for s in rpc_lines(caplog, STREAM)] == ["OK"]  # the one, ended cleanly
    lines = rpc_lines(caplog, UNARY)
    assert ["stream" in line for line in lines] == [True, False]


def test_a_dependency_without_the_stream_is_called_unary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A consent that predates CheckConsentStream (a rolling upgrade) still gets its checks."""
    caplog.set_level(logging.INFO, logger="bizmsg.rpc")

    async def scenario(h: Harness) -> None:
        got = await asyncio.gather(*(h.check("ok", f"p{i}") for i in range(3)))
        assert [r.consent_id for r in got] == ["p0", "p1", "p2"]
        assert (await h.check("ok", "later")).consent_id == "later"
        refused = await raises(h.check("refuse:x"))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION

    run(tmp_path, scenario, streams=False)
    assert len(rpc_lines(caplog, UNARY)) == 5
    assert all("stream" not in line for line in rpc_lines(caplog, UNARY))


def test_internal_streams_can_be_turned_off() -> None:
    assert Settings({}).internal_streams
    for off in ("0", "false", "off", "no"):
        assert not Settings({"BIZMSG_INTERNAL_STREAMS": off}).internal_streams
