"""A business and an opted-in person, end to end through the consent, billing and delivery
processes; the SDK's sessions, protections and recovery."""

from __future__ import annotations

import threading

import pytest

from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.testing import metadata_for
from bizmsg.sdk import MessageDecryptionError, ReplayedMessageError, TamperedMessageError
from tests.delivery.helpers import (
    MARKETING,
    PRICE_MARKETING,
    SERVICE,
    ProcStack,
    S,
    Stack,
    uid,
    wait_until,
)


def test_delivered_exactly_then_read_and_captured_once(procs: ProcStack, st: Stack) -> None:
    shop, person = uid("shop"), uid("ana")
    st.fund(shop, 1_000_000)
    ana = st.person(person)
    biz = st.business(shop)
    st.grant(person, shop, MARKETING)

    bodies = [f"offer {i}: 20% off ü ✓".encode() for i in range(3)]
    sent = [biz.send(f"user:{person}", b, category=MARKETING) for b in bodies]
    assert all(r.price.amount_micros == PRICE_MARKETING and not r.free for r in sent)
    assert st.money(shop) == (3 * PRICE_MARKETING, 0)

    got = list(ana.receive())
    assert [m.plaintext for m in got] == bodies
    assert [m.message_id for m in got] == [r.message_id for r in sent]
    assert all(m.sender == f"business:{shop}" and m.category == MARKETING for m in got)
    assert ana.ack([m.message_id for m in got]) == 3
    assert ana.mark_read([got[0].message_id]) == 1

    first = sent[0].message_id
    assert st.statuses(f"business:{shop}", first) == [
        S.MESSAGE_STATUS_ACCEPTED,
        S.MESSAGE_STATUS_DELIVERED,
        S.MESSAGE_STATUS_READ,
    ]
    # Captured from the outbox once per message, never twice.
    wait_until(lambda: st.money(shop) == (0, 3 * PRICE_MARKETING))
    assert procs.count("outbox") == 0 or wait_until(lambda: procs.count("outbox") == 0)
    assert st.money(shop) == (0, 3 * PRICE_MARKETING)
    # Acked ciphertext is gone; a second ack and a second read change nothing.
    assert procs.count("envelopes", "recipient = :r", r=f"user:{person}") == 0
    assert ana.ack([first]) == 0
    assert ana.mark_read([first]) == 0
    assert st.statuses(f"business:{shop}", first)[-1] == S.MESSAGE_STATUS_READ
    # The sender's feed resumes from a cursor: after the first event come the others.
    events = list(biz.follow_statuses(message_id=first))
    rest = list(biz.follow_statuses(cursor=events[0].cursor, message_id=first))
    assert [e.status for e in rest] == [S.MESSAGE_STATUS_DELIVERED, S.MESSAGE_STATUS_READ]

    # The person answers on the same session: never charged.
    reply = ana.send(f"business:{shop}", b"stop please", category=SERVICE)
    assert reply.free and reply.price.amount_micros == 0
    [answer] = list(biz.receive())
    assert answer.plaintext == b"stop please" and answer.sender == f"user:{person}"
    biz.ack([answer.message_id])
    assert st.money(shop) == (0, 3 * PRICE_MARKETING)


def test_restarted_clients_continue_their_sessions(st: Stack) -> None:
    shop, person = uid("shop"), uid("ben")
    st.fund(shop, 1_000_000)
    ben = st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    biz.send(f"user:{person}", b"one", category=MARKETING)
    assert [m.plaintext for m in ben.receive()] == [b"one"]
    ben.close()
    biz.close()
    ben = st.client(f"user:{person}")
    biz = st.client(f"business:{shop}")
    biz.send(f"user:{person}", b"two", category=MARKETING)
    # Unacked "one" comes back from the local store, "two" decrypts on the kept session.
    got = list(ben.receive())
    assert [m.plaintext for m in got] == [b"one", b"two"]
    ben.ack([m.message_id for m in got])
    ben.send(f"business:{shop}", b"three")
    assert [m.plaintext for m in biz.receive()] == [b"three"]


def test_tampered_and_replayed_ciphertext_rejected(st: Stack) -> None:
    shop, person = uid("shop"), uid("cy")
    st.fund(shop, 1_000_000)
    cy = st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    biz.send(f"user:{person}", b"first", category=MARKETING)
    [raw] = list(
        st.delivery.ReceiveMessages(
            delivery_pb2.ReceiveMessagesRequest(device_id="d1"),
            metadata=metadata_for(f"user:{person}"),
        )
    )
    tampered = bytearray(raw.ciphertext)
    tampered[-3] ^= 0x40
    with pytest.raises(TamperedMessageError):
        cy.crypto.decrypt(raw.sender, raw.sender_device_id, bytes(tampered))
    [msg] = list(cy.receive())  # the untouched envelope still decrypts
    assert msg.plaintext == b"first"
    cy.ack([msg.message_id])
    # The same ciphertext again (e.g. re-injected under another id) is a replay.
    replay = delivery_pb2.ReceiveMessagesResponse()
    replay.CopyFrom(raw)
    replay.message_id = "replayed-id"
    with pytest.raises(MessageDecryptionError) as info:
        cy._open(replay)
    assert isinstance(info.value.cause, ReplayedMessageError)


def test_device_reset_fails_waiting_messages_and_voids_them(procs: ProcStack, st: Stack) -> None:
    """Devices reinstalled before they fetched a message: it can never be decrypted, so it is
    FAILED (not left to expire), its charge voided; the business's next send, with bundles
    fetched again, reaches the new installations."""
    shop, person = uid("shop"), uid("dee")
    user = f"user:{person}"
    st.fund(shop, 1_000_000)
    st.person(person, "phone")
    st.person(person, "tablet")
    biz = st.business(shop)
    st.grant(person, shop)
    lost = biz.send(user, b"to phone and tablet", category=MARKETING)

    phone = st.client(user, "phone", install=2)
    phone.publish_keys(5)
    # The tablet still holds an envelope: the message still waits.
    assert st.statuses(f"business:{shop}", lost.message_id) == [S.MESSAGE_STATUS_ACCEPTED]
    assert procs.count("envelopes", "message_id = :m", m=lost.message_id) == 1

    tablet = st.client(user, "tablet", install=2)
    tablet.publish_keys(5)
    events = st.events(f"business:{shop}", lost.message_id)
    assert [e.status for e in events] == [S.MESSAGE_STATUS_ACCEPTED, S.MESSAGE_STATUS_FAILED]
    assert events[-1].reason == "RECIPIENT_DEVICE_RESET"
    assert procs.count("envelopes", "message_id = :m", m=lost.message_id) == 0
    wait_until(lambda: st.money(shop) == (0, 0))
    # A state never moves back: nothing can ack the failed message into DELIVERED.
    assert phone.ack([lost.message_id]) == 0
    assert list(phone.receive()) == []

    # Fetching the bundles again starts new sessions with the new installations.
    again = biz.send(user, b"hello again", category=MARKETING, refresh_devices=True)
    for device in (phone, tablet):
        [m] = list(device.receive())
        assert m.plaintext == b"hello again"
        device.ack([m.message_id])
    assert st.statuses(f"business:{shop}", again.message_id)[-1] == S.MESSAGE_STATUS_DELIVERED
    wait_until(lambda: st.money(shop) == (0, PRICE_MARKETING))


def test_live_receive_and_status_feed(st: Stack) -> None:
    """Open streams: the mailbox gives what waits, then what arrives, in order; the sender's
    feed follows each message to DELIVERED as it happens."""
    shop, person = uid("shop"), uid("lou")
    st.fund(shop, 1_000_000)
    lou = st.person(person)
    biz = st.business(shop)
    st.grant(person, shop)
    ids = [biz.send(f"user:{person}", b"waiting", category=MARKETING).message_id]
    received: list[bytes] = []
    delivered: list[str] = []

    def listen() -> None:
        for m in lou.receive(follow=True):
            received.append(m.plaintext)
            lou.ack([m.message_id])
            if len(received) == 3:
                return

    def follow() -> None:
        for e in biz.follow_statuses(follow=True):
            if e.status == S.MESSAGE_STATUS_DELIVERED:
                delivered.append(e.message_id)
                if len(delivered) == 3:
                    return

    threads = [threading.Thread(target=f, daemon=True) for f in (listen, follow)]
    for t in threads:
        t.start()
    wait_until(lambda: received == [b"waiting"])
    ids += [
        biz.send(f"user:{person}", f"live {i}".encode(), category=MARKETING).message_id
        for i in range(2)
    ]
    for t in threads:
        t.join(timeout=30)
    assert received == [b"waiting", b"live 0", b"live 1"]
    assert delivered == ids
    wait_until(lambda: st.money(shop) == (0, 3 * PRICE_MARKETING))
