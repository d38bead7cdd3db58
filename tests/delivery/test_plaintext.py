"""No plaintext anywhere on the server side: a marker sent in many messages, both ways, appears
in no database file, no table and no log line of any of the four services."""

from __future__ import annotations

from tests.delivery.helpers import MARKETING, ProcStack, Stack, uid, wait_until

MARKER = "PLAINTEXT-MARKER-7f3a9c"


def _table_text(procs: ProcStack, service: str, table: str) -> str:
    """Every value of every row, bytes decoded byte-for-byte, as one string."""
    out = []
    for row in procs.db.query(service, f'SELECT * FROM "{table}"'):
        for value in row:
            out.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(out)


def test_plaintext_marker_reaches_no_database_or_log(procs: ProcStack, st: Stack) -> None:
    shop = uid("shop")
    people = [uid("mo"), uid("mo")]
    st.fund(shop, 10_000_000)
    biz = st.business(shop)
    clients = []
    for person in people:
        clients.append(st.person(person))
        st.grant(person, shop)
    for i in range(10):  # the pair limit allows 10 a minute per person
        for person in people:
            biz.send(f"user:{person}", f"{MARKER} {i} for {person}".encode(), category=MARKETING)
    for c in clients:
        c.send(f"business:{shop}", f"{MARKER} reply".encode())
    for c in clients:
        got = list(c.receive())
        assert len(got) == 10 and all(MARKER.encode() in m.plaintext for m in got)
        # Half acked (ciphertext deleted, charge captured), half left waiting as ciphertext.
        c.ack([m.message_id for m in got[:5]])
    assert [m.plaintext for m in biz.receive()] == [f"{MARKER} reply".encode()] * 2
    wait_until(lambda: st.money(shop)[1] > 0)

    marker = MARKER.encode()
    # Database files (SQLite, with their WAL) and logs of every service: raw bytes.
    server_files = [
        p
        for p in procs.root.rglob("*")
        if p.is_file() and "clients" not in p.relative_to(procs.root).parts
    ]
    assert any(p.suffix == ".log" for p in server_files)
    for path in server_files:
        assert marker not in path.read_bytes(), path
    # Every table of every service's database (also on PostgreSQL, where there are no files).
    for service in ("consent", "billing", "delivery", "ads"):
        tables = procs.db.tables(service)
        assert tables
        for table in tables:
            assert MARKER not in _table_text(procs, service, table), (service, table)
    # The SDK keeps plaintext on the device only (until acknowledged).
    assert any(marker in p.read_bytes() for p in (procs.root / "clients").rglob("*") if p.is_file())
