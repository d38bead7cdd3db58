"""Key directory, limits, the SDK's protections, and no plaintext anywhere."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.testing import metadata_for
from bizmsg.sdk import MessageDecryptionError, ReplayedMessageError, TamperedMessageError
from tests.delivery.helpers import MARKETING, ThreadStack, fails


def test_one_time_pre_keys_handed_out_exactly_once(services: ThreadStack) -> None:
    st = services.stack
    st.person("alice", pre_keys=20)
    businesses = [f"b{i}" for i in range(4)]
    for b in businesses:
        st.grant("alice", b, MARKETING)

    def fetch(i: int) -> bytes:
        response = st.delivery.GetPreKeyBundle(
            delivery_pb2.GetPreKeyBundleRequest(owner="user:alice", category=MARKETING),
            metadata=metadata_for(f"business:{businesses[i % 4]}"),
        )
        return response.bundles[0].one_time_pre_key

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(fetch, range(28)))
    handed = [k for k in keys if k]
    assert len(handed) == 20 and len(set(handed)) == 20
    assert keys.count(b"") == 8  # then only the signed prekey
    assert st.client("user:alice").pre_key_count() == 0


def test_81st_message_in_a_second_is_refused(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 100_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    for i in range(80):
        acme.send("user:alice", f"m{i}".encode(), category=MARKETING)
    with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") as d:
        acme.send("user:alice", b"one too many", category=MARKETING)
    assert d["QuotaFailure"].violations[0].subject == "business:acme"
    assert 0 < d["RetryInfo"].retry_delay.ToTimedelta().total_seconds() <= 1
    assert services.db("SELECT count(*) FROM messages") == [(80,)]
    assert st.wallet("acme").debits_pending.amount_micros == 80 * 50_000
    services.clock.advance(1.0)
    assert acme.send("user:alice", b"next second", category=MARKETING).message_id
    assert len(list(alice.receive())) == 81


def test_tampered_and_replayed_ciphertext_rejected(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 1_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    acme.send("user:alice", b"first", category=MARKETING)
    [raw] = list(
        st.delivery.ReceiveMessages(
            delivery_pb2.ReceiveMessagesRequest(device_id="d1"),
            metadata=metadata_for("user:alice"),
        )
    )
    tampered = bytearray(raw.ciphertext)
    tampered[-3] ^= 0x40
    with pytest.raises(TamperedMessageError):
        alice.crypto.decrypt(raw.sender, raw.sender_device_id, bytes(tampered))
    [msg] = list(alice.receive())  # the untouched envelope still decrypts
    assert msg.plaintext == b"first"
    alice.ack([msg.message_id])
    # The same ciphertext again (e.g. re-injected under another id) is a replay.
    replay = delivery_pb2.ReceiveMessagesResponse()
    replay.CopyFrom(raw)
    replay.message_id = "replayed-id"
    with pytest.raises(MessageDecryptionError) as info:
        alice._open(replay)
    assert isinstance(info.value.cause, ReplayedMessageError)


def test_restarted_clients_continue_their_sessions(services: ThreadStack) -> None:
    st = services.stack
    st.fund("acme", 1_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    acme.send("user:alice", b"one", category=MARKETING)
    assert [m.plaintext for m in alice.receive()] == [b"one"]
    alice.close()
    acme.close()
    alice = st.client("user:alice")
    acme = st.client("business:acme")
    acme.send("user:alice", b"two", category=MARKETING)
    # Unacked "one" comes back from the local store, "two" decrypts on the kept session.
    got = list(alice.receive())
    assert [m.plaintext for m in got] == [b"one", b"two"]
    alice.ack([m.message_id for m in got])
    alice.send("business:acme", b"three")
    assert [m.plaintext for m in acme.receive()] == [b"three"]


MARKER = "PLAINTEXT-MARKER-7f3a9c"


def test_plaintext_marker_reaches_no_database_or_log(
    services: ThreadStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    st = services.stack
    st.fund("acme", 10_000_000)
    alice = st.person("alice")
    acme = st.business("acme")
    st.grant("alice", "acme")
    for i in range(20):
        acme.send("user:alice", f"{MARKER} {i}".encode(), category=MARKETING)
    alice.send("business:acme", f"{MARKER} reply".encode())
    got = list(alice.receive())
    assert all(MARKER.encode() in m.plaintext for m in got)
    # Half acked, half left waiting as ciphertext.
    alice.ack([m.message_id for m in got[:10]])
    marker = MARKER.encode()
    server_files = [p for p in tmp_path.rglob("*") if p.is_file() and "clients" not in p.parts]
    for path in server_files:
        assert marker not in path.read_bytes(), path
    for service in (services.delivery, services.consent, services.billing):
        for (table,) in _tables(service):
            rows = _dump(service, table)
            assert MARKER not in rows, (service.definition.name, table)
    assert MARKER not in caplog.text


def _tables(service: object) -> list[tuple[str]]:
    from sqlalchemy import inspect

    async def run() -> list[tuple[str]]:
        async with service.runtime.db.engine.connect() as conn:  # type: ignore[attr-defined]
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
        return [(n,) for n in names]

    return service.run(run())  # type: ignore[attr-defined, no-any-return]


def _dump(service: object, table: str) -> str:
    from sqlalchemy import text

    async def run() -> str:
        async with service.runtime.db.read() as s:  # type: ignore[attr-defined]
            rows = (await s.execute(text(f'SELECT * FROM "{table}"'))).all()
        out = []
        for row in rows:
            for value in row:
                out.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
        return "\n".join(out)

    return service.run(run())  # type: ignore[attr-defined, no-any-return]
