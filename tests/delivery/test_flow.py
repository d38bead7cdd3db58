"""A business and an opted-in person, end to end through consent, billing and delivery."""

from __future__ import annotations

from tests.delivery.helpers import (
    MARKETING,
    PRICE_MARKETING,
    SERVICE,
    S,
    ThreadStack,
    wait_until,
)


def test_business_to_person_delivered_read_and_captured_once(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 1_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme", MARKETING)

    sent = [acme.send("user:alice", f"offer {i}".encode(), category=MARKETING) for i in range(3)]
    assert all(r.price.amount_micros == PRICE_MARKETING and not r.free for r in sent)
    assert st.wallet("acme").debits_pending.amount_micros == 3 * PRICE_MARKETING

    got = list(alice.receive())
    assert [m.plaintext for m in got] == [b"offer 0", b"offer 1", b"offer 2"]
    assert [m.message_id for m in got] == [r.message_id for r in sent]
    assert all(m.sender == "business:acme" and m.category == MARKETING for m in got)
    assert alice.ack([m.message_id for m in got]) == 3
    assert alice.mark_read([got[0].message_id]) == 1

    first = sent[0].message_id
    assert st.statuses("business:acme", first) == [
        S.MESSAGE_STATUS_ACCEPTED,
        S.MESSAGE_STATUS_DELIVERED,
        S.MESSAGE_STATUS_READ,
    ]
    wait_until(lambda: st.wallet("acme").debits_posted.amount_micros == 3 * PRICE_MARKETING)
    assert st.wallet("acme").debits_pending.amount_micros == 0
    # Acked ciphertext is gone; a second ack and a second read change nothing.
    assert services.db("SELECT count(*) FROM envelopes") == [(0,)]
    assert alice.ack([first]) == 0
    assert alice.mark_read([first]) == 0
    assert st.statuses("business:acme", first)[-1] == S.MESSAGE_STATUS_READ

    # The person answers on the same session; never charged.
    reply = alice.send("business:acme", b"stop please", category=SERVICE)
    assert reply.free and reply.price.amount_micros == 0
    [answer] = list(acme.receive())
    assert answer.plaintext == b"stop please" and answer.sender == "user:alice"
    acme.ack([answer.message_id])
    wait_until(lambda: st.wallet("acme").debits_posted.amount_micros == 3 * PRICE_MARKETING)
