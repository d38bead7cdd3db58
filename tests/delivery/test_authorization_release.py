"""A SendMessage that ends while billing is still authorizing its charge leaves no hold behind.

Over the internal stream, billing runs an item to the end even when delivery's caller has gone
away, and a call that timed out may have committed: either way there can be an authorization
that no message will capture, holding the business's funds until it expires (the message's TTL
and a day). Delivery writes a RELEASE row to its outbox; the relay asks again with the same
request_id (billing replays its answer) and voids it, retrying while billing cannot be reached,
also after a restart. In-process: delivery's real sending, outbox and relay on SQLite and
PostgreSQL, with a stand-in for billing's stub whose first answer never comes in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2
from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.auth import Principal, set_current_principal
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.errors import DomainError
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.multiplex import rpc_error
from bizmsg.kit.storage import Database
from delivery_svc import store
from delivery_svc.dependencies import Dependencies
from delivery_svc.limits import LimitSettings
from delivery_svc.models import Message, idempotency_keys
from delivery_svc.notify import Notifier
from delivery_svc.relay import Relay
from delivery_svc.sending import Outgoing, Sending


class Billing:
    """Billing's stub: the first AuthorizeCharge hangs (or fails with `first`); a repeat with the
    same request_id fails UNAVAILABLE `unreachable` times, then answers with the authorization
    the first one made (or is refused, with `refuse_repeat`)."""

    def __init__(
        self,
        first: grpc.StatusCode | None = None,
        unreachable: int = 0,
        refuse_repeat: bool = False,
    ) -> None:
        self.first = first
        self.unreachable = unreachable
        self.refuse_repeat = refuse_repeat
        self.asked: list[str] = []
        self.voided: list[tuple[str, str]] = []

    async def AuthorizeCharge(
        self, req: billing_pb2.AuthorizeChargeRequest
    ) -> billing_pb2.AuthorizeChargeResponse:
        self.asked.append(req.request_id)
        if len(self.asked) == 1:
            if self.first is None:
                await asyncio.Event().wait()  # billing is still at it when the caller goes
            else:
                raise rpc_error(self.first, "billing failed")
        elif len(self.asked) <= 1 + self.unreachable:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "billing is down")
        elif self.refuse_repeat:
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "insufficient funds")
        return billing_pb2.AuthorizeChargeResponse(authorization_id=f"auth-{req.request_id}")

    async def VoidCharge(
        self, req: billing_pb2.VoidChargeRequest
    ) -> billing_pb2.VoidChargeResponse:
        self.voided.append((req.request_id, req.authorization_id))
        return billing_pb2.VoidChargeResponse()


class Consent:
    async def CheckConsent(
        self, _: consent_pb2.CheckConsentRequest
    ) -> consent_pb2.CheckConsentResponse:
        return consent_pb2.CheckConsentResponse(allowed=True)


def _dependencies(billing: Billing) -> Dependencies:
    """Delivery's real Dependencies (error mapping, release) on the stand-in stubs, unary."""
    deps = Dependencies.__new__(Dependencies)
    deps.consent = Consent()  # type: ignore[assignment]
    deps.billing = billing  # type: ignore[assignment]
    deps._checks = deps._authorizations = None
    return deps


OUT = Outgoing(
    sender=Principal.parse("business:b1"),
    sender_device_id="",
    recipient=Principal.parse("user:p1"),
    category=common_pb2.CATEGORY_MARKETING,
    envelopes=[("d1", b"x")],
    ttl=timedelta(days=30),
    referral=common_pb2.Referral(),
)


class Delivery:
    """Sending and the relay of one delivery process, on a migrated database."""

    def __init__(self, db: Database, billing: Billing, clock: ManualClock) -> None:
        self.db = db
        notifier = Notifier()
        deps = _dependencies(billing)
        self.sending = Sending(db, clock, None, deps, notifier, None)  # type: ignore[arg-type]
        # A long interval: the test runs the relay itself.
        self.relay = Relay(db, clock, deps, notifier, interval=3600)

    async def settled(self) -> None:
        """Background work of the sends (the RELEASE row's write) is over."""
        for _ in range(200):
            if not self.sending._settling:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the release was never queued")


def _run(
    database_url: str, billing: Billing, body: Callable[[Delivery, ManualClock], Awaitable[Any]]
) -> Any:
    async def go() -> Any:
        db = Database(database_url)
        await db.migrate("delivery_svc:migrations")
        clock = ManualClock()
        try:
            return await body(Delivery(db, billing, clock), clock)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_a_send_cancelled_while_billing_authorizes_voids_what_billing_made(
    database_url: str,
) -> None:
    billing = Billing()

    async def body(d: Delivery, _: ManualClock) -> None:
        charging = asyncio.ensure_future(d.sending._consent_and_charge("m1", OUT, "DE"))
        await asyncio.sleep(0.01)
        charging.cancel()
        await asyncio.gather(charging, return_exceptions=True)
        await d.settled()
        assert await d.relay.relay_outbox() == 1
        assert await d.relay.relay_outbox() == 0  # done with: the row is gone

    _run(database_url, billing, body)
    assert billing.asked == ["m1", "m1"]  # asked again with the same request_id
    assert billing.voided == [("void-m1", "auth-m1")]


def test_a_timed_out_authorization_is_voided_and_the_caller_gets_the_error(
    database_url: str,
) -> None:
    billing = Billing(first=grpc.StatusCode.DEADLINE_EXCEEDED)

    async def body(d: Delivery, _: ManualClock) -> DomainError:
        with pytest.raises(DomainError) as caught:
            await d.sending._consent_and_charge("m2", OUT, "DE")
        await d.settled()
        assert await d.relay.relay_outbox() == 1
        return caught.value

    error = _run(database_url, billing, body)
    assert error.reason == "BILLING_UNAVAILABLE"
    assert billing.voided == [("void-m2", "auth-m2")]


def test_a_refusal_by_billing_is_not_asked_again(database_url: str) -> None:
    billing = Billing(first=grpc.StatusCode.RESOURCE_EXHAUSTED)

    async def body(d: Delivery, _: ManualClock) -> DomainError:
        with pytest.raises(DomainError) as caught:
            await d.sending._consent_and_charge("m3", OUT, "DE")
        await d.settled()
        assert await d.relay.relay_outbox() == 0  # nothing queued
        return caught.value

    error = _run(database_url, billing, body)
    assert error.reason == "INSUFFICIENT_FUNDS"
    assert billing.asked == ["m3"]
    assert billing.voided == []


def test_a_repeat_that_billing_refuses_means_nothing_was_held(database_url: str) -> None:
    billing = Billing(first=grpc.StatusCode.DEADLINE_EXCEEDED, refuse_repeat=True)

    async def body(d: Delivery, _: ManualClock) -> None:
        with contextlib.suppress(DomainError):
            await d.sending._consent_and_charge("m5", OUT, "DE")
        await d.settled()
        assert await d.relay.relay_outbox() == 1
        assert await d.relay.relay_outbox() == 0  # done with, not retried

    _run(database_url, billing, body)
    assert billing.asked == ["m5", "m5"]
    assert billing.voided == []


def test_the_release_waits_out_billing_being_unreachable_across_a_restart(
    database_url: str,
) -> None:
    """The case the release is for (billing did not answer in time) is also the case in which
    billing may not answer the repeat either: the outbox keeps asking, with backoff, and the
    row outlives the process that wrote it."""
    billing = Billing(first=grpc.StatusCode.DEADLINE_EXCEEDED, unreachable=2)

    async def body(d: Delivery, clock: ManualClock) -> None:
        with contextlib.suppress(DomainError):
            await d.sending._consent_and_charge("m4", OUT, "DE")
        await d.settled()
        assert await d.relay.relay_outbox() == 1  # billing still down: backs off
        assert await d.relay.relay_outbox() == 0  # not due yet
        # Delivery restarts: a new process finds the row and carries on.
        await d.db.dispose()
        again = Delivery(Database(d.db.url), billing, clock)
        try:
            clock.advance(timedelta(seconds=1))
            assert await again.relay.relay_outbox() == 1  # down once more
            assert billing.voided == []
            clock.advance(timedelta(seconds=2))
            assert await again.relay.relay_outbox() == 1
            assert await again.relay.relay_outbox() == 0
        finally:
            await again.db.dispose()

    _run(database_url, billing, body)
    assert billing.asked == ["m4"] * 4  # the call, two unanswered repeats, the answer
    assert billing.voided == [("void-m4", "auth-m4")]


class Answering(Billing):
    """Billing's stub that authorizes at once, each message under its own id."""

    async def AuthorizeCharge(
        self, req: billing_pb2.AuthorizeChargeRequest
    ) -> billing_pb2.AuthorizeChargeResponse:
        self.asked.append(req.request_id)
        return billing_pb2.AuthorizeChargeResponse(authorization_id=f"auth-{req.request_id}")


def test_callers_gone_while_their_stores_wait_keep_the_stored_ones_charge_only(
    database_url: str,
) -> None:
    """Two copies of one send, both callers gone while their stores wait for the group commit
    (SQLite: the writers' turn is held). The stores still run: the first commits and keeps its
    authorization; the second fails on the request_id's key and has its own voided."""
    billing = Answering()

    async def body(d: Delivery, clock: ManualClock) -> tuple[int, int]:
        async with d.db.write() as s:
            await store.put_device(s, "user:p1", "d1", b"i", b"s", b"g", "DE", clock.now())
        idem = Idempotency(idempotency_keys, clock)
        sending = Sending(d.db, clock, idem, d.sending.deps, Notifier(), LimitSettings())
        set_current_principal(OUT.sender)
        request = delivery_pb2.SendMessageRequest(request_id="twice", recipient="user:p1")
        async with d.db.write():  # SQLite: the stores queue behind this
            calls = [asyncio.ensure_future(sending.send(request, OUT)) for _ in range(2)]
            for _ in range(200):
                if len(billing.asked) == 2:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.01)
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        for _ in range(400):
            if not sending._settling and billing.voided:
                break
            await asyncio.sleep(0.005)
        async with d.db.read() as s:
            messages = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
            answers = (
                await s.execute(select(func.count()).select_from(idempotency_keys))
            ).scalar_one()
        return messages, answers

    assert _run(database_url, billing, body) == (1, 1)
    assert len(billing.asked) == 2
    assert len(billing.voided) == 1  # the copy that lost voids its own authorization only
    lost = billing.voided[0][1]
    assert lost in {f"auth-{m}" for m in billing.asked}
