"""A SendMessage that ends while billing is still authorizing its charge leaves no hold behind.

Over the internal stream, billing runs an item to the end even when delivery's caller has gone
away, and a call that timed out may have committed: either way there can be an authorization
that no message will capture, holding the business's funds until it expires (the message's TTL
and a day). Delivery asks again with the same request_id (billing replays its answer) and voids
it. In-process, with a stand-in for billing whose first answer never comes in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import grpc
import pytest

from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.errors import DomainError
from bizmsg.kit.multiplex import rpc_error
from delivery_svc import sending as sending_module
from delivery_svc.dependencies import dependency_error
from delivery_svc.sending import Outgoing, Sending


class Billing:
    """Consent allows; billing's first AuthorizeCharge hangs (or fails as told), a repeat with
    the same request_id answers with the authorization the first one made (after failing
    UNAVAILABLE `unreachable` times)."""

    def __init__(self, first: grpc.StatusCode | None = None, unreachable: int = 0) -> None:
        self.first = first
        self.unreachable = unreachable
        self.asked: list[str] = []
        self.voided: list[tuple[str, str]] = []

    async def check_consent(self, *_: Any) -> consent_pb2.CheckConsentResponse:
        return consent_pb2.CheckConsentResponse(allowed=True)

    async def authorize(self, message_id: str, *_: Any) -> billing_pb2.AuthorizeChargeResponse:
        self.asked.append(message_id)
        if len(self.asked) == 1:
            if self.first is None:
                await asyncio.Event().wait()  # billing is still at it when the caller goes
            else:
                _fail(self.first)
        elif len(self.asked) <= 1 + self.unreachable:
            _fail(grpc.StatusCode.UNAVAILABLE)
        return billing_pb2.AuthorizeChargeResponse(authorization_id=f"auth-{message_id}")

    async def void(self, request_id: str, authorization_id: str, reason: int) -> None:
        self.voided.append((request_id, authorization_id))


def _fail(code: grpc.StatusCode) -> None:
    failed = rpc_error(code, "billing failed")
    raise dependency_error("billing", failed) from failed  # as Dependencies does


def _sending(billing: Billing) -> Sending:
    return Sending(
        db=None,  # type: ignore[arg-type]  # not reached: the send ends before storing
        clock=ManualClock(),
        idem=None,  # type: ignore[arg-type]
        deps=billing,  # type: ignore[arg-type]
        notifier=None,  # type: ignore[arg-type]
        limit_settings=None,  # type: ignore[arg-type]
    )


OUT = Outgoing(
    sender=Principal.parse("business:b1"),
    sender_device_id="",
    recipient=Principal.parse("user:p1"),
    category=common_pb2.CATEGORY_MARKETING,
    envelopes=[("d1", b"x")],
    ttl=timedelta(days=30),
    referral=common_pb2.Referral(),
)


async def _settled(sending: Sending) -> None:
    for _ in range(100):
        await asyncio.sleep(0)
        if not sending._settling:
            return
    raise AssertionError("the release never finished")


def test_a_send_cancelled_while_billing_authorizes_voids_what_billing_made() -> None:
    async def go() -> Billing:
        billing = Billing()
        sending = _sending(billing)
        charging = asyncio.ensure_future(sending._consent_and_charge("m1", OUT, "DE"))
        await asyncio.sleep(0.01)
        charging.cancel()
        await asyncio.gather(charging, return_exceptions=True)
        await _settled(sending)
        return billing

    billing = asyncio.run(go())
    assert billing.asked == ["m1", "m1"]  # asked again with the same request_id
    assert billing.voided == [("void-m1", "auth-m1")]


def _charge(first: grpc.StatusCode, message_id: str) -> tuple[Billing, DomainError | None]:
    """A charge whose first authorization call fails with `first`, once all settling is over."""

    async def go() -> tuple[Billing, DomainError | None]:
        billing = Billing(first)
        sending = _sending(billing)
        error = None
        try:
            await sending._consent_and_charge(message_id, OUT, "DE")
        except DomainError as e:
            error = e
        await _settled(sending)
        return billing, error

    return asyncio.run(go())


def test_a_timed_out_authorization_is_voided_and_the_caller_gets_the_error() -> None:
    billing, error = _charge(grpc.StatusCode.DEADLINE_EXCEEDED, "m2")
    assert error is not None and error.reason == "BILLING_UNAVAILABLE"
    assert billing.voided == [("void-m2", "auth-m2")]


def test_a_refusal_by_billing_is_not_asked_again() -> None:
    billing, error = _charge(grpc.StatusCode.RESOURCE_EXHAUSTED, "m3")
    assert error is not None and error.reason == "INSUFFICIENT_FUNDS"
    assert billing.asked == ["m3"]
    assert billing.voided == []


def test_the_release_waits_out_billing_being_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case the release is for (billing did not answer in time) is also the case in which
    billing may not answer the repeat either: it is asked again, with pauses, until it does."""
    monkeypatch.setattr(sending_module, "RELEASE_RETRIES", (0.01,) * 5)

    async def go() -> Billing:
        billing = Billing(first=grpc.StatusCode.DEADLINE_EXCEEDED, unreachable=3)
        sending = _sending(billing)
        with contextlib.suppress(DomainError):
            await sending._consent_and_charge("m4", OUT, "DE")
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not sending._settling:
                break
        return billing

    billing = asyncio.run(go())
    assert billing.asked == ["m4"] * 5  # the call, three unanswered repeats, the answer
    assert billing.voided == [("void-m4", "auth-m4")]
