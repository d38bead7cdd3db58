"""Refusals leave nothing behind (no envelope, no pending charge, no prekey handed out);
retries are idempotent across a restart; expiry voids; a stopped dependency is UNAVAILABLE."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.testing import metadata_for
from tests.delivery.helpers import (
    AUTHENTICATION,
    MARKETING,
    PRICE_AUTHENTICATION,
    PRICE_MARKETING,
    SERVICE,
    ProcStack,
    S,
    Stack,
    fails,
    retry_delay,
    uid,
    wait_until,
)


def _stored_for(procs: ProcStack, person: str) -> tuple[int, int]:
    """(messages, envelopes) delivery holds for this person."""
    user = f"user:{person}"
    return (
        procs.count("messages", "recipient = :r", r=user),
        procs.count("envelopes", "recipient = :r", r=user),
    )


@pytest.mark.parametrize("how", ["none", "revoked", "blocked", "window"])
def test_consent_refusal(procs: ProcStack, st: Stack, how: str) -> None:
    shop, person = uid("shop"), uid("eve")
    st.fund(shop, 1_000_000)
    eve = st.person(person, pre_keys=3)
    biz = st.business(shop)
    category = MARKETING
    expected = {
        "none": "NO_CONSENT",
        "revoked": "REVOKED",
        "blocked": "BLOCKED",
        "window": "NO_OPEN_WINDOW",
    }[how]
    if how == "revoked":
        st.grant(person, shop, MARKETING)
        st.revoke(person, shop)
    elif how == "blocked":
        st.grant(person, shop)
        st.block(person, shop)
    elif how == "window":
        category = SERVICE
    with fails(grpc.StatusCode.FAILED_PRECONDITION, expected) as d:
        biz.send(f"user:{person}", b"hello", category=category)
    assert d["PreconditionFailure"].violations[0].type == expected
    if how != "window":
        # No consent for any category: not even the keys are handed out.
        with fails(grpc.StatusCode.FAILED_PRECONDITION, expected):
            st.delivery.GetPreKeyBundle(
                delivery_pb2.GetPreKeyBundleRequest(owner=f"user:{person}"),
                metadata=metadata_for(f"business:{shop}"),
            )
    # Refused even with a session in hand (a raw send skips the bundle fetch).
    with fails(grpc.StatusCode.FAILED_PRECONDITION, expected):
        st.raw_send(f"business:{shop}", f"user:{person}", category)
    assert _stored_for(procs, person) == (0, 0)
    assert eve.pre_key_count() == 3
    assert st.money(shop) == (0, 0)


def test_insufficient_funds_then_top_up(procs: ProcStack, st: Stack) -> None:
    shop, person = uid("shop"), uid("fay")
    st.fund(shop, 10)  # less than one marketing message
    st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_FUNDS") as d:
        biz.send(f"user:{person}", b"hello", category=MARKETING, request_id="order-7")
    assert d["QuotaFailure"].violations
    assert retry_delay(d) > 0
    assert _stored_for(procs, person) == (0, 0)
    assert st.money(shop) == (0, 0)
    # After a top-up the same request goes through.
    st.fund(shop, 1_000_000)
    assert biz.send(f"user:{person}", b"hello", category=MARKETING, request_id="order-7")
    assert _stored_for(procs, person) == (1, 1)
    assert st.money(shop) == (PRICE_MARKETING, 0)


def test_same_request_id_twice_and_after_a_delivery_restart(procs: ProcStack, st: Stack) -> None:
    shop, person = uid("shop"), uid("gus")
    st.fund(shop, 1_000_000)
    st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    first = biz.send(f"user:{person}", b"once", category=MARKETING, request_id="order-1")
    again = biz.send(f"user:{person}", b"once", category=MARKETING, request_id="order-1")
    procs.restart("delivery")
    biz = st.client(f"business:{shop}")  # a restarted client too: it resends its stored bytes
    after = biz.send(f"user:{person}", b"once", category=MARKETING, request_id="order-1")
    assert first.message_id == again.message_id == after.message_id
    assert _stored_for(procs, person) == (1, 1)
    assert st.money(shop) == (PRICE_MARKETING, 0)
    gus = st.client(f"user:{person}")
    assert [m.plaintext for m in gus.receive()] == [b"once"]
    # Another message under the same request id is refused.
    with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
        st.raw_send(f"business:{shop}", f"user:{person}", MARKETING, request_id="order-1")
    assert _stored_for(procs, person) == (1, 1)


def test_concurrent_twins_store_one_message_and_keep_one_charge(
    procs: ProcStack, st: Stack
) -> None:
    """Eight copies of one request at once: the first to commit its idempotency key wins;
    the others replay its answer and void their own authorizations."""
    shop, person = uid("shop"), uid("ida")
    st.fund(shop, 1_000_000)
    st.bare_device(f"user:{person}")
    st.grant(person, shop)
    request = st.raw_send_request(f"user:{person}", MARKETING, request_id="twin-1")
    md = metadata_for(f"business:{shop}")
    futures = [st.delivery.SendMessage.future(request, metadata=md, timeout=60) for _ in range(8)]
    answers = [f.result() for f in futures]
    assert len({a.message_id for a in answers}) == 1
    assert _stored_for(procs, person) == (1, 1)
    assert procs.count("status_events", "recipient = :r", r=f"user:{person}") == 1
    assert st.money(shop) == (PRICE_MARKETING, 0)


def test_ttl_passes_undelivered(procs: ProcStack, st: Stack) -> None:
    shop, person = uid("shop"), uid("hal")
    st.fund(shop, 1_000_000)
    hal = st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    code = biz.send(f"user:{person}", b"123456", category=AUTHENTICATION, ttl=timedelta(minutes=5))
    keep = biz.send(f"user:{person}", b"offer", category=MARKETING)
    assert st.money(shop) == (PRICE_AUTHENTICATION + PRICE_MARKETING, 0)
    procs.advance(5 * 60 + 1)
    wait_until(
        lambda: st.statuses(f"business:{shop}", code.message_id)[-1] == S.MESSAGE_STATUS_EXPIRED
    )
    wait_until(lambda: st.money(shop) == (PRICE_MARKETING, 0))
    assert procs.count("envelopes", "message_id = :m", m=code.message_id) == 0
    assert st.statuses(f"business:{shop}", code.message_id) == [
        S.MESSAGE_STATUS_ACCEPTED,
        S.MESSAGE_STATUS_EXPIRED,
    ]
    # Only the message still inside its TTL arrives.
    assert [m.message_id for m in hal.receive()] == [keep.message_id]


@pytest.mark.parametrize("down", ["consent", "billing"])
def test_dependency_stopped_is_unavailable_then_sending_works(
    procs: ProcStack, st: Stack, down: str
) -> None:
    shop, person = uid("shop"), uid("ivy")
    st.fund(shop, 1_000_000)
    st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    biz.send(f"user:{person}", b"session", category=MARKETING)
    procs.stop(down)
    try:
        with fails(grpc.StatusCode.UNAVAILABLE, f"{down.upper()}_UNAVAILABLE") as d:
            biz.send(f"user:{person}", b"retry me", category=MARKETING, request_id="while-down")
        assert retry_delay(d) > 0
        assert _stored_for(procs, person) == (1, 1)
    finally:
        procs.start(down)
    assert st.money(shop) == (PRICE_MARKETING, 0)
    biz = st.client(f"business:{shop}")

    def send() -> bool:
        # Delivery's channel reconnects with backoff; the client retries the same request
        # (the SDK resends the ciphertext it made the first time).
        try:
            biz.send(f"user:{person}", b"retry me", category=MARKETING, request_id="while-down")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            return False
        return True

    wait_until(send, interval=0.2)
    ivy = st.client(f"user:{person}")
    assert [m.plaintext for m in ivy.receive()] == [b"session", b"retry me"]
    # An attempt whose call to billing failed queued a RELEASE (billing may have authorized);
    # the outbox asks billing again under that request_id (which authorizes, if billing never
    # saw the first) and voids it: a hold that comes and goes after the answer, so wait for it.
    wait_until(lambda: st.money(shop) == (2 * PRICE_MARKETING, 0))
