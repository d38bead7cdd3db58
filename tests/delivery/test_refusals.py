"""Refusals leave nothing behind: no envelope, no pending charge, no prekey handed out."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.testing import free_port, metadata_for
from bizmsg.sdk import Client
from tests.delivery.helpers import (
    AUTHENTICATION,
    MARKETING,
    SERVICE,
    S,
    ThreadStack,
    fails,
    thread_stack,
    wait_until,
)


def _nothing_stored(services: ThreadStack) -> None:
    assert services.db("SELECT count(*) FROM envelopes") == [(0,)]
    assert services.db("SELECT count(*) FROM messages") == [(0,)]


def _send_raw(c: Client, recipient: str, category: int, request_id: str = "r1") -> None:
    c._stub.SendMessage(
        delivery_pb2.SendMessageRequest(
            request_id=request_id,
            recipient=recipient,
            category=category,  # type: ignore[arg-type]
            sender_device_id=c.device_id,
            envelopes=[delivery_pb2.DeviceEnvelope(device_id="d1", ciphertext=b"\x01" * 40)],
        ),
        metadata=metadata_for(c.principal),
    )


@pytest.mark.parametrize("how", ["none", "revoked", "blocked", "window"])
def test_consent_refusal(services: ThreadStack, how: str) -> None:
    st = services.stack
    st.fund("acme", 1_000_000)
    alice = st.person("alice", pre_keys=3)
    acme = st.business("acme")
    category = MARKETING
    expected = {
        "none": "NO_CONSENT",
        "revoked": "REVOKED",
        "blocked": "BLOCKED",
        "window": "NO_OPEN_WINDOW",
    }[how]
    if how == "revoked":
        st.grant("alice", "acme", MARKETING)
        st.revoke("alice", "acme")
    elif how == "blocked":
        st.grant("alice", "acme")
        st.block("alice", "acme")
    elif how == "window":
        category = SERVICE
    with fails(grpc.StatusCode.FAILED_PRECONDITION, expected) as d:
        acme.send("user:alice", b"hello", category=category)
    assert d["PreconditionFailure"].violations[0].type == expected
    if how != "window":
        # No consent for any category: not even the keys are handed out.
        with fails(grpc.StatusCode.FAILED_PRECONDITION, expected):
            st.delivery.GetPreKeyBundle(
                delivery_pb2.GetPreKeyBundleRequest(owner="user:alice"),
                metadata=metadata_for("business:acme"),
            )
    # Refused after a session exists too (raw send, skipping the bundle fetch).
    with fails(grpc.StatusCode.FAILED_PRECONDITION, expected):
        _send_raw(acme, "user:alice", category)
    _nothing_stored(services)
    assert alice.pre_key_count() == 3
    account = st.wallet("acme")
    assert account.debits_pending.amount_micros == 0
    assert account.debits_posted.amount_micros == 0


def test_insufficient_funds(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 10)  # less than one marketing message
    st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_FUNDS") as d:
        acme.send("user:alice", b"hello", category=MARKETING)
    assert d["QuotaFailure"].violations
    assert d["RetryInfo"].retry_delay.seconds > 0
    _nothing_stored(services)
    assert st.wallet("acme").debits_pending.amount_micros == 0
    # After a top-up the same request works.
    st.fund("acme", 1_000_000)
    assert acme.send("user:alice", b"hello", category=MARKETING).message_id


def test_same_request_id_twice_and_after_restart(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 1_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    first = acme.send("user:alice", b"once", category=MARKETING, request_id="order-1")
    again = acme.send("user:alice", b"once", category=MARKETING, request_id="order-1")
    services.restart_delivery()
    acme = st.client("business:acme")  # a restarted client too
    after = acme.send("user:alice", b"once", category=MARKETING, request_id="order-1")
    assert first.message_id == again.message_id == after.message_id
    assert services.db("SELECT count(*) FROM messages") == [(1,)]
    assert st.wallet("acme").debits_pending.amount_micros == 50_000
    alice = st.client("user:alice")
    assert [m.plaintext for m in alice.receive()] == [b"once"]
    # Another message under the same request id is refused.
    with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
        _send_raw(acme, "user:alice", MARKETING, request_id="order-1")


def test_ttl_expiry_voids_and_deletes(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 1_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    sent = acme.send("user:alice", b"123456", category=AUTHENTICATION, ttl=timedelta(minutes=5))
    assert st.wallet("acme").debits_pending.amount_micros == 20_000
    services.clock.advance(timedelta(minutes=5, seconds=1))
    wait_until(
        lambda: st.statuses("business:acme", sent.message_id)[-1] == S.MESSAGE_STATUS_EXPIRED
    )
    wait_until(lambda: st.wallet("acme").debits_pending.amount_micros == 0)
    assert st.wallet("acme").debits_posted.amount_micros == 0
    assert services.db("SELECT count(*) FROM envelopes") == [(0,)]
    assert list(alice.receive()) == []
    assert st.statuses("business:acme", sent.message_id) == [
        S.MESSAGE_STATUS_ACCEPTED,
        S.MESSAGE_STATUS_EXPIRED,
    ]


@pytest.mark.parametrize("down", ["consent", "billing"])
def test_dependency_down_is_unavailable_then_recovers(
    database_url_factory, tmp_path, clock, down: str
) -> None:
    with thread_stack(database_url_factory, tmp_path, clock) as services:
        st = services.stack
        st.fund("acme", 1_000_000)
        st.person("alice")
        acme = st.business("acme")
        st.grant("alice", "acme")
        acme.send("user:alice", b"session", category=MARKETING)
        base_pending = st.wallet("acme").debits_pending.amount_micros
        # Point delivery at a port nobody listens on, as if the service were stopped.
        services.delivery.dependency_targets[down] = f"127.0.0.1:{free_port()}"
        services.restart_delivery_with(services.delivery.dependency_targets)
        acme = st.client("business:acme")  # the restarted delivery listens elsewhere
        with fails(grpc.StatusCode.UNAVAILABLE, f"{down.upper()}_UNAVAILABLE"):
            acme.send("user:alice", b"lost?", category=MARKETING)
        assert services.db("SELECT count(*) FROM messages") == [(1,)]
        assert st.wallet("acme").debits_pending.amount_micros == base_pending
        services.restart_delivery_with(
            {"consent": services.consent.target, "billing": services.billing.target}
        )
        acme = st.client("business:acme")
        assert acme.send("user:alice", b"back", category=MARKETING).message_id
        assert services.db("SELECT count(*) FROM messages") == [(2,)]
