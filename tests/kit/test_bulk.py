"""A group commit's deferred writes (bizmsg.kit.bulk): on PostgreSQL in as few statements as
they allow, with the outcome and the errors of writing them row by row (SQLite's way)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    case,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bizmsg.kit import prepared
from bizmsg.kit.prepared import Prepared, Tally, deferring, flush_deferred
from bizmsg.kit.storage import Database, UTCDateTime

metadata = MetaData()
NOTES = Table(
    "bulk_notes",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("body", LargeBinary, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("seen", Boolean, nullable=False),
    Column("tag", String(20), nullable=False, default="plain"),  # a Python-side default
)
COUNTS = Table(
    "bulk_counts",
    metadata,
    Column("key", String(20), primary_key=True),
    Column("n", Integer, nullable=False),
)
LAST = Table(
    "bulk_last",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("n", Integer, nullable=False),
)
INSERT_NOTE = Prepared(NOTES.insert())


def _bump(insert: Any) -> Any:
    """+1 on a key's count, refused past `limit` (a NULL count, which NOT NULL rejects), as
    delivery's pair counters are."""
    limit = bindparam("limit", type_=Integer)

    def fits(n: Any) -> Any:
        return case((n <= limit, n), else_=null())

    return (
        insert(COUNTS)
        .values(key=bindparam("key"), n=fits(literal(1)))
        .on_conflict_do_update(index_elements=["key"], set_={"n": fits(COUNTS.c.n + 1)})
    )


BUMP = Prepared(_bump(sqlite.insert), postgresql=_bump(postgresql.insert))
PUT_LAST = Prepared(update(LAST).where(LAST.c.name == bindparam("name")).values(n=bindparam("n")))
LAST_TALLY = Tally(PUT_LAST, ("name",), "n")
PUT_COUNT = Prepared(
    update(COUNTS).where(COUNTS.c.key == bindparam("key")).values(n=bindparam("n"))
)
COUNT_TALLY = Tally(PUT_COUNT, ("key",), "n")
AT = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)


def _note(i: int) -> dict[str, Any]:
    return {"id": f"n{i}", "body": bytes([i]) * 3, "at": AT, "seen": i % 2 == 0}


def on_tables(database_url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    async def go() -> None:
        db = Database(database_url)
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(LAST.insert(), [{"name": "a", "n": 0}, {"name": "b", "n": 0}])
        try:
            await body(db)
        finally:
            await db.dispose()

    asyncio.run(go())


async def _flush(db: Database, defer: Callable[[AsyncConnection], Awaitable[None]]) -> list[str]:
    """Defers what `defer` writes in a group commit's transaction, flushes it and commits; the
    statements the flush sent (PostgreSQL; SQLite's are not traced here)."""
    sent: list[str] = []
    async with db.engine.connect() as conn:
        await conn.begin()
        with deferring(conn):
            await defer(conn)
            with prepared.traced(conn.sync_engine.pool, sent.append):
                await flush_deferred(conn)
        await conn.commit()
    return sent


async def _rows(db: Database, table: Table) -> list[tuple[Any, ...]]:
    async with db.read() as s:
        return [tuple(r) for r in (await s.execute(select(table).order_by(*table.primary_key)))]


async def _hold(conn: AsyncConnection, tally: Tally, key: str, adds: int) -> None:
    """`adds` adds on a held count of 0 (as after the tally's first upsert)."""
    tally.hold(conn, (key,), 0)
    for _ in range(adds):
        tally.add(conn, (key,))


def test_inserts_upserts_and_counts_go_in_one_statement(database_url: str) -> None:
    async def body(db: Database) -> None:
        async def defer(conn: AsyncConnection) -> None:
            await INSERT_NOTE.execute_later(conn, [_note(i) for i in range(5)])
            await INSERT_NOTE.execute_later(conn, [{**_note(9), "tag": "given"}])  # other keys
            await BUMP.execute_later(conn, [{"key": k, "limit": 5} for k in ("x", "y")])
            await _hold(conn, LAST_TALLY, "a", 3)
            await _hold(conn, LAST_TALLY, "b", 2)

        sent = await _flush(db, defer)
        if db.dialect == "postgresql":
            assert len(sent) == 1 and sent[0].startswith("WITH"), sent
        notes = await _rows(db, NOTES)
        assert notes == [
            *[(f"n{i}", bytes([i]) * 3, AT, i % 2 == 0, "plain") for i in range(5)],
            ("n9", bytes([9]) * 3, AT, False, "given"),
        ]
        assert await _rows(db, COUNTS) == [("x", 1), ("y", 1)]
        assert await _rows(db, LAST) == [("a", 3), ("b", 2)]
        # Again on existing keys: the upsert's update branch, from the arrays' rows.
        await _flush(db, lambda c: BUMP.execute_later(c, [{"key": "x", "limit": 5}]))
        assert await _rows(db, COUNTS) == [("x", 2), ("y", 1)]

    on_tables(database_url, body)


def test_two_changes_to_one_table_go_in_statements_of_their_own(database_url: str) -> None:
    """An upsert and a count on the same table might change the same row, which one statement
    would do only once: they go apart, and both land."""

    async def body(db: Database) -> None:
        async with db.write() as s:
            await s.execute(COUNTS.insert().values(key="held", n=7))

        async def defer(conn: AsyncConnection) -> None:
            await BUMP.execute_later(conn, [{"key": "new", "limit": 5}])
            await INSERT_NOTE.execute_later(conn, [_note(1)])
            await _hold(conn, COUNT_TALLY, "held", 4)

        sent = await _flush(db, defer)
        if db.dialect == "postgresql":
            assert len(sent) == 2, sent
        assert await _rows(db, COUNTS) == [("held", 4), ("new", 1)]
        assert len(await _rows(db, NOTES)) == 1

    on_tables(database_url, body)


def test_an_upsert_sees_a_row_an_earlier_statement_inserted(database_url: str) -> None:
    """A plain insert and an upsert of the same key: row by row the upsert finds the row and
    counts on; in one statement it would not see it (and fail on its key), so they go apart."""
    insert_count = Prepared(COUNTS.insert())

    async def body(db: Database) -> None:
        async def defer(conn: AsyncConnection) -> None:
            await insert_count.execute_later(conn, [{"key": "k", "n": 3}])
            await BUMP.execute_later(conn, [{"key": "k", "limit": 5}])

        sent = await _flush(db, defer)
        if db.dialect == "postgresql":
            assert len(sent) == 2, sent
        assert await _rows(db, COUNTS) == [("k", 4)]

    on_tables(database_url, body)


@pytest.mark.parametrize(
    "rows, expected",
    [
        # The same key twice: one statement could not change its row twice; row by row adds up.
        ([{"key": "x", "limit": 5}, {"key": "x", "limit": 5}], [("x", 2)]),
        # Values of the ON CONFLICT clause that differ between rows cannot be bound once.
        ([{"key": "x", "limit": 5}, {"key": "y", "limit": 6}], [("x", 1), ("y", 1)]),
    ],
)
def test_rows_that_cannot_go_in_together_go_in_one_by_one(
    database_url: str, rows: list[dict[str, Any]], expected: list[tuple[Any, ...]]
) -> None:
    async def body(db: Database) -> None:
        async def defer(conn: AsyncConnection) -> None:
            await INSERT_NOTE.execute_later(conn, [_note(1), _note(2)])
            await BUMP.execute_later(conn, rows)

        sent = await _flush(db, defer)
        if db.dialect == "postgresql":
            assert sent[0].startswith("INSERT INTO bulk_notes") and "unnest" in sent[0]
            assert sent[1].startswith("INSERT INTO bulk_counts") and "unnest" not in sent[1]
        assert await _rows(db, COUNTS) == expected
        assert len(await _rows(db, NOTES)) == 2

    on_tables(database_url, body)


@pytest.mark.parametrize("refusal", ["duplicate key", "guard"])
def test_a_refused_row_fails_the_flush_and_writes_nothing(database_url: str, refusal: str) -> None:
    async def body(db: Database) -> None:
        async with db.write() as s:
            await s.execute(COUNTS.insert().values(key="full", n=5))

        async def defer(conn: AsyncConnection) -> None:
            await INSERT_NOTE.execute_later(conn, [_note(1), _note(2)])
            if refusal == "duplicate key":
                await INSERT_NOTE.execute_later(conn, [_note(3), _note(1)])
            else:  # past its limit: the count's NOT NULL refuses it
                await BUMP.execute_later(conn, [{"key": "full", "limit": 5}])
            await _hold(conn, LAST_TALLY, "a", 1)

        with pytest.raises(IntegrityError):
            await _flush(db, defer)
        assert await _rows(db, NOTES) == []
        assert await _rows(db, COUNTS) == [("full", 5)]
        assert await _rows(db, LAST) == [("a", 0), ("b", 0)]

    on_tables(database_url, body)
