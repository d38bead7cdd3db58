"""Prepared statements give what SQLAlchemy gives, on SQLite (the driver path) and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from bizmsg.kit.prepared import Prepared, traced
from bizmsg.kit.storage import Database, UTCDateTime

metadata = MetaData()
ITEMS = Table(
    "prepared_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(40), nullable=False),
    Column("flag", Boolean, nullable=False, default=False),
    Column("note", String(40), nullable=False, default="none"),
    Column("at", UTCDateTime, nullable=True),
)
INSERT = Prepared(ITEMS.insert())
BY_ID = Prepared(select(ITEMS).where(ITEMS.c.id == bindparam("id")))
RENAME = Prepared(
    update(ITEMS).where(ITEMS.c.name == bindparam("old")).values(name=bindparam("new"))
)
BUMP = Prepared(
    update(ITEMS)
    .where(ITEMS.c.id == bindparam("id"))
    .values(id=ITEMS.c.id + 100)
    .returning(ITEMS.c.id, ITEMS.c.at)
)


def on_items(
    database_url: str, body: Callable[[Database], Awaitable[None]], *, pool_size: int = 10
) -> None:
    """`body` on a new Database with the test's table, disposed of afterwards."""

    async def go() -> None:
        db = Database(database_url, pool_size=pool_size)
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        try:
            await body(db)
        finally:
            await db.dispose()

    asyncio.run(go())


def test_prepared_matches_sqlalchemy(database_url: str) -> None:
    at = datetime(2026, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))

    async def go(db: Database) -> None:
        async with db.write() as s:
            conn = await s.connection()
            await INSERT.execute(conn, {"id": 1, "name": "a", "at": at})
            # Columns left out take their defaults; rows of the same keys in one call.
            await INSERT.execute_many(conn, [{"id": 2, "name": "b"}, {"id": 3, "name": "b"}])
            assert await RENAME.execute(conn, {"old": "b", "new": "c"}) == 2
            with pytest.raises(IntegrityError):  # the same type as through SQLAlchemy
                async with s.begin_nested():
                    await INSERT.execute(await s.connection(), {"id": 1, "name": "dup"})
        async with db.read() as s:
            conn = await s.connection()
            mine = await BY_ID.first(conn, {"id": 1})
            theirs = (await conn.execute(select(ITEMS).where(ITEMS.c.id == 1))).one()
            assert tuple(mine) == tuple(theirs)
            assert mine.at == at and mine.at.tzinfo is not None and mine.flag is False
            two = await BY_ID.first(conn, {"id": 2})
            assert (two.name, two.flag, two.note, two.at) == ("c", False, "none", None)
            assert await BY_ID.first(conn, {"id": 99}) is None
        async with db.write() as s:
            rows = await BUMP.rows(await s.connection(), {"id": 1})
            assert [(r.id, r.at) for r in rows] == [(101, at.astimezone(UTC))]

    on_items(database_url, go)


BY_NAME = Prepared(select(ITEMS).where(ITEMS.c.name == bindparam("name")).order_by(ITEMS.c.id))


def test_rows_each_gives_each_parameter_set_its_own_rows(database_url: str, backend: str) -> None:
    """rows_each: each set's rows as `rows` gives them (none, one, several, a set twice); on
    PostgreSQL all in one statement's round trip (asyncpg's fetchmany)."""
    at = datetime(2026, 5, 1, 14, 30, tzinfo=UTC)

    async def go(db: Database) -> None:
        async with db.write() as s:
            await INSERT.execute_many(
                await s.connection(),
                [
                    {"id": 1, "name": "a", "flag": True, "at": at},
                    {"id": 2, "name": "b", "flag": False, "at": None},
                    {"id": 3, "name": "b", "flag": True, "at": at},
                ],
            )
        sets = [{"name": n} for n in ("b", "none", "a", "b")]
        seen: list[str] = []
        async with db.connect() as conn:
            alone = [await BY_NAME.rows(conn, p) for p in sets]
            with traced(None, seen.append):
                each = await BY_NAME.rows_each(conn, sets)
            assert await BY_NAME.rows_each(conn, []) == []
            assert await BY_NAME.rows_each(conn, sets[:1]) == [alone[0]]
        assert each == alone
        assert [[r.id for r in rows] for rows in each] == [[2, 3], [], [1], [2, 3]]
        assert each[0][1].at == at and each[0][1].flag is True  # processed as `rows` does
        assert each[0][1]._fields == alone[0][1]._fields  # the position column is not kept
        if backend == "postgresql":  # (the tracer sees PostgreSQL's statements only)
            assert len(seen) == 1 and "bizmsg_slot" in seen[0], seen

    on_items(database_url, go)


def test_float_and_numeric_columns_come_back_as_through_sqlalchemy(database_url: str) -> None:
    # asyncpg's processors for these depend on the column's type oid, known only from a result.
    ratio = (cast(ITEMS.c.id, Float) / 4.0).label("ratio")
    price = (cast(ITEMS.c.id, Numeric(10, 2)) / 4).label("price")
    stmt = select(ratio, price).where(ITEMS.c.id == bindparam("id"))
    numbers = Prepared(stmt)

    async def go(db: Database) -> None:
        async with db.write() as s:
            await INSERT.execute(await s.connection(), {"id": 3, "name": "a"})
        async with db.read() as s:
            conn = await s.connection()
            mine = await numbers.first(conn, {"id": 3})
            theirs = (await conn.execute(stmt, {"id": 3})).one()
        assert mine.ratio == theirs.ratio == 0.75 and type(mine.ratio) is float
        assert mine.price == theirs.price and type(mine.price) is type(theirs.price)

    on_items(database_url, go)


def test_prepared_statements_are_part_of_the_callers_transaction(database_url: str) -> None:
    """A prepared write inside write() is rolled back with it (on PostgreSQL the driver-level
    statement must run in the transaction SQLAlchemy began, which asyncpg's adapter opens
    lazily); one on connect() stands alone."""

    class Boom(Exception):
        pass

    async def go(db: Database) -> None:
        with pytest.raises(Boom):
            async with db.write() as s:
                await INSERT.execute(await s.connection(), {"id": 7, "name": "gone"})
                raise Boom
        async with db.write() as s:  # first statement of a transaction, then a rollback
            await s.execute(select(ITEMS.c.id))
            await INSERT.execute(await s.connection(), {"id": 8, "name": "kept"})
        async with db.connect() as conn:
            await INSERT.execute(conn, {"id": 9, "name": "alone"})
        async with db.read() as s:
            ids = set((await s.execute(select(ITEMS.c.id))).scalars())
        assert ids == {8, 9}

    on_items(database_url, go)


def test_a_statement_cancelled_midway_leaves_no_connection_behind(database_url: str) -> None:
    """A caller that goes away while its prepared statement runs must not leave its connection
    in the pool: asyncpg cannot roll that transaction back while the statement is in flight, so
    the connection would go back still holding the transaction's row locks, and the next
    writer of those rows would wait for ever."""
    if "sqlite" in database_url:
        pytest.skip("SQLite statements run to the end without suspending: nothing to cancel")
    sleep = Prepared(select(func.pg_sleep(bindparam("seconds", type_=Float))))

    async def go(db: Database) -> None:
        async with db.write() as s:
            await INSERT.execute(await s.connection(), {"id": 1, "name": "a"})
        started = asyncio.Event()

        async def lock_then_sleep() -> None:
            async with db.write() as s:
                conn = await s.connection()
                await RENAME.execute(conn, {"old": "a", "new": "locked"})  # row 1 locked
                started.set()
                await sleep.rows(conn, {"seconds": 2.0})  # cancelled in here

        task = asyncio.create_task(lock_then_sleep())
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):  # the row is free again: its lock went with it
            async with db.write() as s:
                assert await RENAME.execute(await s.connection(), {"old": "a", "new": "b"}) == 1

    on_items(database_url, go, pool_size=1)


def test_a_statement_refused_for_another_connections_lock_runs_once_it_is_free(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """On SQLite a prepared statement runs at once; when another connection holds the write
    lock it waits on the loop (other tasks run meanwhile) and runs when the lock is free."""
    import sqlite3

    path = tmp_path / "locked.db"

    async def go() -> tuple[int, int, list[str]]:
        db = Database(f"sqlite+aiosqlite:///{path}")
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        seen: list[str] = []

        async def meanwhile() -> None:
            await asyncio.sleep(0.05)
            seen.append("loop ran")
            other.execute("COMMIT")

        try:
            async with db.connect() as conn:
                ticker = asyncio.create_task(meanwhile())
                changed = await INSERT.execute(conn, {"id": 7, "name": "waited"})
                await ticker
                (row,) = await BY_ID.rows(conn, {"id": 7})
        finally:
            other.close()
            await db.dispose()
        return changed, row.id, seen

    changed, row_id, seen = asyncio.run(go())
    assert (changed, row_id, seen) == (1, 7, ["loop ran"])
