"""Statements per call on the hot paths, pinned: CheckConsent (every message), RecordUserMessage
and RecordBusinessReply (every message from a person, every reply).

Two counts per call: what SQLAlchemy executes (before_cursor_execute) and what reaches the
database (SQLite's trace callback, asyncpg's query logger), which also sees what SQLAlchemy
does not count: a BEGIN/COMMIT a driver issues itself, a pool pre-ping, a statement run on the
driver directly. More statements than pinned here is a regression in the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.prepared import traced
from consent_svc.models import Relation
from consent_svc.store import RelationReader
from tests.consent.conftest import Consent, rid

DELIVERY = "service:delivery"


@dataclass
class Counts:
    sqlalchemy: int = 0
    database: int = 0


class StatementCounter:
    """Counts statements on every connection the service's engine opens from now on."""

    def __init__(self, consent: Consent) -> None:
        self.counts = Counts()
        self.statements: list[str] = []
        self._consent = consent
        self._engine: AsyncEngine = consent.thread.runtime.db.engine
        self._dialect = consent.thread.runtime.db.dialect

    def _on_sqlalchemy(self, _conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        self.counts.sqlalchemy += 1
        if self._dialect == "postgresql":
            # SQLAlchemy runs these as asyncpg prepared statements, which asyncpg's query
            # logger does not see (it sees transaction control, pings and plain queries).
            self._on_database(sql)

    def _on_database(self, sql: str) -> None:
        self.counts.database += 1
        self.statements.append(sql)

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        driver = dbapi_conn.driver_connection
        if self._dialect == "sqlite":
            # bizmsg.kit.sqlite_inline wraps the sqlite3 connection; trace it there.
            driver._conn.set_trace_callback(self._on_database)
        else:
            driver.add_query_logger(lambda record: self._on_database(record.query))

    def install(self) -> None:
        sync = self._engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._on_sqlalchemy)
        event.listen(sync, "connect", self._on_connect)
        # Connections opened before the listener would go uncounted: start from none.
        self._consent.thread.run(self._consent.thread.runtime.db.dispose())

    def remove(self) -> None:
        sync = self._engine.sync_engine
        event.remove(sync, "before_cursor_execute", self._on_sqlalchemy)
        event.remove(sync, "connect", self._on_connect)

    def _settle(self) -> None:
        self._consent.thread.run(asyncio.sleep(0))

    def measure(self, fn: Callable[[], Any], calls: int = 5) -> Counts:
        """Statements per call, the same for every one of `calls` calls."""
        per_call = []
        for _ in range(calls):
            # asyncpg calls its query loggers one loop turn after the statement: let the
            # service's loop run that turn before and after, so each count is this call's.
            self._settle()
            self.counts, self.statements = Counts(), []
            fn()
            self._settle()
            per_call.append(self.counts)
        assert all(p == per_call[0] for p in per_call), (per_call, self.statements)
        return per_call[0]


@pytest.fixture
def counter(consent: Consent) -> Iterator[StatementCounter]:
    sc = StatementCounter(consent)
    sc.install()
    # Warm the pool so a connection's own set-up (PRAGMAs, type codecs) is not counted.
    for _ in range(3):
        consent.check("warm", "acme", c.CATEGORY_MARKETING)
    try:
        yield sc
    finally:
        sc.remove()


def _pinned(backend: str, sqlite: Counts, postgresql: Counts) -> Counts:
    return sqlite if backend == "sqlite" else postgresql


def test_check_consent_is_one_statement(
    consent: Consent, counter: StatementCounter, backend: str
) -> None:
    consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    got = counter.measure(lambda: consent.check("alice", "acme", c.CATEGORY_MARKETING))
    # One SELECT by primary key on the driver; no BEGIN/COMMIT around it, on either backend
    # (the kit's pool does not pre-ping connections).
    assert got == _pinned(backend, Counts(0, 1), Counts(0, 1)), counter.statements
    assert consent.check("alice", "acme", c.CATEGORY_MARKETING).allowed
    # No relation at all: the same single read.
    got = counter.measure(lambda: consent.check("bob", "acme", c.CATEGORY_MARKETING))
    assert got == _pinned(backend, Counts(0, 1), Counts(0, 1)), counter.statements


def test_checks_that_arrive_together_share_one_read_on_postgresql(
    consent: Consent, backend: str
) -> None:
    """Checks that arrive in the same turn of the loop read their rows in one round trip on
    PostgreSQL (bizmsg.kit.keyed_reads, Prepared.rows_each), each getting exactly the row its
    own read gets; a check alone is a plain execution of the statement. On SQLite each reads
    alone (a read there runs inline)."""
    consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    consent.grant("bob", "acme")
    consent.grant("alice", "other", c.CATEGORY_UTILITY)
    db = consent.thread.runtime.db

    async def go() -> tuple[list[Any], list[Any], list[str], list[str], Any]:
        async with db.read() as s:
            found = (await s.execute(select(Relation.person_hash, Relation.business_id))).all()
        keys = [(str(ph), str(biz)) for ph, biz in found] + [("nobody", "acme")]
        async with db.connect() as conn:
            alone = [await RelationReader._STATE.first(conn, {"ph": p, "biz": b}) for p, b in keys]
        reader = RelationReader(db)
        seen: list[str] = []
        with traced(None, seen.append):
            together = await asyncio.gather(*(reader.state(p, b) for p, b in keys * 3))
        single: list[str] = []
        with traced(None, single.append):
            one = await reader.state(*keys[0])
        alone_rows = [None if r is None else tuple(r) for r in alone]
        return alone_rows * 3, list(together), seen, single, one

    alone, together, seen, single, one = consent.thread.run(go())
    assert len(alone) == 12 and alone.count(None) == 3
    assert together == alone
    assert one == alone[0]
    if backend == "postgresql":
        assert len(seen) == 1 and "bizmsg_slot" in seen[0], seen
        assert len(single) == 1 and "bizmsg_slot" not in single[0], single


def test_read_plan_is_a_key_probe_whatever_the_statistics(consent: Consent, backend: str) -> None:
    """The generic plan PostgreSQL keeps for the check's read, made on a table with no
    statistics (a new deployment), probes the primary key: no scan of relations."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL only: SQLite plans each statement when it is prepared")
    sql = RelationReader._STATE._prepare("postgresql", {"ph": "", "biz": ""})[0].sql
    db = consent.thread.runtime.db

    async def plan() -> str:
        async with db.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("SET plan_cache_mode = force_generic_plan")
            await driver.execute(f"PREPARE one AS {sql}")
            try:
                rows = await driver.fetch("EXPLAIN EXECUTE one('a', 'b')")
            finally:
                await driver.execute("DEALLOCATE one")
                await driver.execute("RESET plan_cache_mode")
            return "\n".join(r[0] for r in rows)

    text = consent.thread.run(plan())
    assert "Index Scan using relations_pkey" in text, text
    assert "Seq Scan" not in text, text


def test_record_user_message_and_business_reply(
    consent: Consent, counter: StatementCounter, backend: str
) -> None:
    def message(click: str = "") -> pb.RecordUserMessageResponse:
        consent.clock.advance(1)  # each message moves the window: a real write every time
        req = pb.RecordUserMessageRequest(request_id=rid(), person_id="alice", business_id="acme")
        if click:
            req.referral.CopyFrom(c.Referral(click_id=click, campaign_id="camp-1"))
        resp: pb.RecordUserMessageResponse = consent.call("RecordUserMessage", req, DELIVERY)
        return resp

    def reply() -> pb.RecordBusinessReplyResponse:
        req = pb.RecordBusinessReplyRequest(request_id=rid(), person_id="alice", business_id="acme")
        resp: pb.RecordBusinessReplyResponse = consent.call("RecordBusinessReply", req, DELIVERY)
        return resp

    message()  # the person's first contact makes their key and history: not the hot path
    # SQLAlchemy: the person's key, one upsert RETURNING the window, the answer stored (ON
    # CONFLICT DO NOTHING: a new request_id needs no lookup first).
    # The database also sees the transaction: BEGIN (IMMEDIATE on SQLite) and COMMIT, which
    # the kit sends to the driver directly.
    write = _pinned(backend, Counts(3, 5), Counts(3, 5))
    assert counter.measure(message) == write, counter.statements
    assert counter.measure(lambda: message("click-1")) == write, counter.statements
    # Replies: the row's state locked, the window update when it changes (the first reply
    # opens the free-entry window), the answer.
    assert counter.measure(reply, calls=1) == _pinned(backend, Counts(3, 5), Counts(3, 5))
    assert counter.measure(reply) == _pinned(backend, Counts(2, 4), Counts(2, 4))

    # A retry (rare) runs the work again in a transaction that is rolled back when the answer
    # insert finds the first answer, then reads that answer: two transactions.
    req = pb.RecordUserMessageRequest(request_id=rid(), person_id="alice", business_id="acme")
    first = consent.call("RecordUserMessage", req, DELIVERY)
    got = counter.measure(lambda: consent.call("RecordUserMessage", req, DELIVERY))
    assert got == _pinned(backend, Counts(4, 8), Counts(4, 8)), counter.statements
    assert consent.call("RecordUserMessage", req, DELIVERY) == first


def test_statement_counter_sees_the_database(consent: Consent) -> None:
    """The counter itself: a statement run on the driver, bypassing SQLAlchemy, is counted."""
    sc = StatementCounter(consent)
    sc.install()
    try:

        async def raw() -> None:
            async with consent.thread.runtime.db.engine.connect() as conn:
                driver: Any = (await conn.get_raw_connection()).driver_connection
                if consent.thread.runtime.db.dialect == "sqlite":
                    await driver.execute_fetchall("SELECT 42", ())
                else:
                    await driver.fetchrow("SELECT 42")

        consent.thread.run(raw())
        assert "SELECT 42" in sc.statements
    finally:
        sc.remove()
