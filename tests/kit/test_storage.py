"""Storage and idempotency on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bizmsg.kit.auth import Principal, set_current_principal
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.errors import AlreadyExists, InvalidArgument
from bizmsg.kit.idempotency import Idempotency, idempotency_table
from bizmsg.kit.prepared import Prepared
from bizmsg.kit.storage import Database, UTCDateTime, postgres_url

metadata = MetaData()
IDEM = idempotency_table(metadata)
COUNTER = Table(
    "counter",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", Integer, nullable=False),
    Column("note", String(50)),
    Column("at", UTCDateTime),
)


def _add_request_type() -> type:
    """A request message with a request_id, built at run time so the kit needs no test protos."""
    fdp = descriptor_pb2.FileDescriptorProto(name="kit_test.proto", package="kittest")
    fdp.syntax = "proto3"
    msg = fdp.message_type.add(name="AddRequest")
    f = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="request_id", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    msg.field.add(name="amount", number=2, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kittest.AddRequest"))


AddRequest = _add_request_type()


async def _setup(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with db.write() as s:
        await s.execute(COUNTER.insert().values(id=1, value=0))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_utc_datetime_round_trips_aware(database_url: str) -> None:
    async def go() -> datetime:
        db = Database(database_url)
        await _setup(db)
        plus_two = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
        async with db.write() as s:
            await s.execute(COUNTER.update().values(at=plus_two))
        async with db.read() as s:
            got = (await s.execute(select(COUNTER.c.at))).scalar_one()
        await db.dispose()
        return got

    got = run(go())
    assert got == datetime(2026, 3, 1, 12, 0, tzinfo=UTC) and got.tzinfo is not None


def test_utc_datetime_binds_on_sqlite_the_text_sqlalchemy_would() -> None:
    """UTCDateTime formats SQLite's text itself (faster); it must be the text SQLAlchemy's own
    processors make, or stored values would stop comparing and sorting alike."""
    from sqlalchemy.dialects.sqlite import aiosqlite
    from sqlalchemy.types import TypeDecorator

    dialect = aiosqlite.dialect()
    as_compiled = UTCDateTime().dialect_impl(dialect)  # what a statement's compiler uses
    ours = as_compiled.bind_processor(dialect)
    theirs = TypeDecorator.bind_processor(as_compiled, dialect)
    assert ours is not None and theirs is not None
    for value in (
        datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(0))),  # UTC, not datetime.UTC
        datetime(2026, 3, 1, 12, 0),  # naive: taken to be UTC
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        None,
    ):
        assert ours(value) == theirs(value), value


def test_concurrent_writers_do_not_lose_updates(database_url: str) -> None:
    async def go() -> int:
        db = Database(database_url)
        await _setup(db)

        async def bump() -> None:
            async with db.write() as s:
                row = (
                    await s.execute(
                        select(COUNTER.c.value).where(COUNTER.c.id == 1).with_for_update()
                    )
                ).scalar_one()
                await asyncio.sleep(0)
                await s.execute(COUNTER.update().values(value=row + 1))

        await asyncio.gather(*(bump() for _ in range(40)))
        async with db.read() as s:
            value = (await s.execute(select(COUNTER.c.value))).scalar_one()
        await db.dispose()
        return int(value)

    assert run(go()) == 40


def test_idempotency_replays_and_refuses_reuse(database_url: str) -> None:
    async def go() -> None:
        db = Database(database_url)
        await _setup(db)
        idem = Idempotency(IDEM, ManualClock())
        set_current_principal(Principal.parse("business:acme"))
        calls = 0

        def req(rid: str, amount: int):  # type: ignore[no-untyped-def]
            return AddRequest(request_id=rid, amount=amount)

        async def work(session, amount: int) -> wrappers_pb2.Int64Value:  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            await session.execute(COUNTER.update().values(value=COUNTER.c.value + amount))
            return wrappers_pb2.Int64Value(value=amount * 10)

        first = await idem.run(
            db, "Add", req("r1", 5), wrappers_pb2.Int64Value, lambda s: work(s, 5)
        )
        again = await idem.run(
            db, "Add", req("r1", 5), wrappers_pb2.Int64Value, lambda s: work(s, 5)
        )
        assert first == again and calls == 1
        with pytest.raises(AlreadyExists):
            await idem.run(db, "Add", req("r1", 6), wrappers_pb2.Int64Value, lambda s: work(s, 6))

        async def fails(session) -> wrappers_pb2.Int64Value:  # type: ignore[no-untyped-def]
            await session.execute(COUNTER.update().values(value=COUNTER.c.value + 100))
            raise InvalidArgument([("amount", "too big")])

        with pytest.raises(InvalidArgument):
            await idem.run(db, "Add", req("r2", 100), wrappers_pb2.Int64Value, fails)
        # the failure stored nothing and changed nothing; the id may be used again
        await idem.run(db, "Add", req("r2", 100), wrappers_pb2.Int64Value, lambda s: work(s, 100))

        # concurrent duplicates: one effect
        results = await asyncio.gather(
            *(
                idem.run(db, "Add", req("r3", 1), wrappers_pb2.Int64Value, lambda s: work(s, 1))
                for _ in range(10)
            )
        )
        assert {r.value for r in results} == {10}
        async with db.read() as s:
            total = (await s.execute(select(COUNTER.c.value))).scalar_one()
            keys = (await s.execute(select(func.count()).select_from(IDEM))).scalar_one()
        assert total == 5 + 100 + 1 and keys == 3
        await db.dispose()

    run(go())


def test_sqlite_waits_for_another_process_lock_without_blocking_the_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Statements run on the loop's thread; a writer waiting for another connection's lock
    (another process or replica on the same file) sleeps between retries, so the loop runs."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"

    async def go() -> tuple[int, int]:
        ours, theirs = Database(url), Database(url)
        await _setup(ours)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        holding = asyncio.Event()

        async def hold_lock() -> None:
            async with theirs.write() as s:
                await s.execute(COUNTER.update().values(value=100))
                holding.set()
                await asyncio.sleep(0.5)

        holder = asyncio.create_task(hold_lock())
        await holding.wait()
        before = ticks
        async with ours.write() as s:  # BEGIN IMMEDIATE waits for `theirs` to commit
            value = (await s.execute(select(COUNTER.c.value))).scalar_one()
            await s.execute(COUNTER.update().values(value=value + 1))
        waited_ticks = ticks - before
        await holder
        tick_task.cancel()
        async with ours.read() as s:
            final = (await s.execute(select(COUNTER.c.value))).scalar_one()
        await ours.dispose()
        await theirs.dispose()
        return waited_ticks, int(final)

    waited_ticks, final = run(go())
    assert final == 101  # the waiting writer saw the other's commit, then wrote after it
    assert waited_ticks >= 10  # the loop ran all the while the writer waited


def test_sqlite_checkpoint_folds_the_wal_into_the_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "wal.db"

    async def go() -> tuple[int, int]:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await _setup(db)
        for i in range(200):
            async with db.write() as s:
                await s.execute(COUNTER.insert().values(id=i + 2, value=i, note="x" * 40))
        grown = (tmp_path / "wal.db-wal").stat().st_size
        await db.checkpoint()
        # A checkpointed WAL is rewritten from its start by the next writer instead of growing.
        for i in range(200):
            async with db.write() as s:
                await s.execute(COUNTER.update().where(COUNTER.c.id == i + 2).values(value=0))
        after = (tmp_path / "wal.db-wal").stat().st_size
        await db.dispose()
        return grown, after

    grown, after = run(go())
    assert grown > 0
    assert after <= grown


def test_sqlite_wal_stays_bounded_under_steady_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Writers that never pause (group commits one after the other) with the server's
    checkpoint running now and then: the WAL starts again from its beginning after each
    checkpoint, so the file stops growing. A checkpoint beside a writer never reached the WAL's
    end, and the WAL grew by all that was written (136 MB in 10 s of SendMessage)."""
    path = tmp_path / "steady.db"
    insert = Prepared(COUNTER.insert())

    async def go() -> tuple[int, int]:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await _setup(db)
        stop = asyncio.Event()
        written = [0]

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                row = {"id": 10 + w * 1_000_000 + i, "value": i, "note": "x" * 400}
                await db.write_batched(lambda c, row=row: insert.execute(c, row))
                written[0] += 1
                i += 1

        async def checkpoints() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
                await db.checkpoint()

        tasks = [asyncio.ensure_future(writer(w)) for w in range(8)]
        tasks.append(asyncio.ensure_future(checkpoints()))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
        # Frames in the WAL since it last started again (a checkpoint that copies nothing).
        conn = sqlite3.connect(path)
        try:
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()
        await db.dispose()
        return frames, written[0]

    frames, rows = run(go())
    assert rows > 2000
    # A WAL that never started again holds every frame written since the start: measured, 2.5
    # per row. One that did holds the frames since the last checkpoint: 0.03-0.08 per row.
    assert frames < rows / 4, (frames, rows)


def test_write_batched_commits_together_and_fails_alone(database_url: str) -> None:
    """Group commit: concurrent works share transactions, so a work that raises (a domain
    refusal after writing, a unique-key clash) is rolled back alone and only its caller sees
    the error. SQLite runs a failed batch again with a savepoint per work; PostgreSQL runs a
    failed batch's works again one transaction each."""
    from sqlalchemy.exc import IntegrityError

    async def go() -> tuple[list[object], int, int, set[int]]:
        db = Database(database_url)
        await _setup(db)

        async def work(i: int, s) -> int:  # type: ignore[no-untyped-def]
            await s.execute(COUNTER.update().values(value=COUNTER.c.value + 1))
            if i % 10 == 3:
                await s.execute(COUNTER.insert().values(id=1000 + i, value=i))
                raise InvalidArgument([("i", "refused after writing")])
            # i % 10 == 7 clashes with row 1's primary key
            await s.execute(COUNTER.insert().values(id=1 if i % 10 == 7 else 2000 + i, value=i))
            return i * 2

        with _commits(db) as commits:
            outcomes = await asyncio.gather(
                *(db.write_batched(lambda s, i=i: work(i, s)) for i in range(50)),
                return_exceptions=True,
            )
        async with db.read() as s:
            value = int(
                (await s.execute(select(COUNTER.c.value).where(COUNTER.c.id == 1))).scalar_one()
            )
            ids = set((await s.execute(select(COUNTER.c.id))).scalars())
        await db.dispose()
        return outcomes, value, commits[0], ids

    outcomes, value, commits, ids = run(go())
    for i, got in enumerate(outcomes):
        if i % 10 == 3:
            assert isinstance(got, InvalidArgument)
        elif i % 10 == 7:
            assert isinstance(got, IntegrityError)
        else:
            assert got == i * 2
    ok = [i for i in range(50) if i % 10 not in (3, 7)]
    assert value == len(ok)  # the failed works' updates were rolled back with them
    assert ids == {1} | {2000 + i for i in ok}
    if database_url.startswith("sqlite"):
        assert commits < len(ok) / 2  # shared transactions


def test_write_batched_takes_savepoints_only_after_a_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite: a batch whose works all succeed runs without savepoints (each would copy the
    pages its work changes into a statement journal); a batch in which one work raises is
    rolled back and run again with a savepoint per work, and only that work fails."""
    from bizmsg.kit import sqlite_inline

    bump = Prepared(COUNTER.update().values(value=COUNTER.c.value + 1))

    async def go() -> tuple[list[object], list[object], int, list[str], list[str]]:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'sp.db'}")
        await _setup(db)
        runs = [0]

        async def work(i: int, conn, fail: int | None = None) -> int:  # type: ignore[no-untyped-def]
            runs[0] += 1
            await bump.execute(conn, {})
            if i == fail:
                raise InvalidArgument([("i", "refused after writing")])
            return i

        clean: list[str] = []
        with sqlite_inline.traced(str(tmp_path / "sp.db"), clean.append):
            ok = await asyncio.gather(
                *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(10))
            )
        runs[0] = 0
        failed: list[str] = []
        with sqlite_inline.traced(str(tmp_path / "sp.db"), failed.append):
            mixed = await asyncio.gather(
                *(db.write_batched(lambda c, i=i: work(i, c, fail=4)) for i in range(10)),
                return_exceptions=True,
            )
        async with db.read() as s:
            value = int((await s.execute(select(COUNTER.c.value))).scalar_one())
        await db.dispose()
        assert runs[0] > 10  # the failed batch ran again
        return list(ok), list(mixed), value, clean, failed

    ok, mixed, value, clean, failed = run(go())
    assert ok == list(range(10))
    assert isinstance(mixed[4], InvalidArgument)
    assert [m for i, m in enumerate(mixed) if i != 4] == [i for i in range(10) if i != 4]
    assert value == 10 + 9  # the failed work's bump was rolled back alone
    assert not [s for s in clean if "SAVEPOINT" in s]
    assert [s for s in failed if s.startswith("SAVEPOINT")]


def test_write_batched_runs_deferred_inserts_together_and_a_clash_fails_alone(
    database_url: str,
) -> None:
    """Rows a work defers (Prepared.execute_later) go in with the whole batch's before the
    commit (SQLite: one execute_many per statement; PostgreSQL: one statement for all, see
    test_bulk); a clash among them (a twin's key) sends the batch round again work by work,
    where only the twin fails. Outside a group commit the rows go in at once."""
    from sqlalchemy.exc import IntegrityError

    from bizmsg.kit import prepared as prepared_module

    insert = Prepared(COUNTER.insert())
    bump = Prepared(COUNTER.update().where(COUNTER.c.id == 1).values(value=COUNTER.c.value + 1))
    many: list[int] = []
    real = Prepared.execute_many

    async def counting(self, conn, rows):  # type: ignore[no-untyped-def]
        if self is insert:
            many.append(len(rows))
        await real(self, conn, rows)

    async def go() -> tuple[list[object], int, set[int], int]:
        db = Database(database_url)
        await _setup(db)

        async def work(i: int, conn) -> int:  # type: ignore[no-untyped-def]
            await bump.execute(conn, {})
            # 13 and 17 both insert id 1013: the later one clashes.
            row_id = 1013 if i in (13, 17) else 1000 + i
            await insert.execute_later(conn, [{"id": row_id, "value": i}])
            return i

        inserts: list[str] = []  # PostgreSQL: the statements that insert into the table
        Prepared.execute_many = counting  # type: ignore[method-assign]
        try:
            with prepared_module.traced(db.engine.sync_engine.pool, inserts.append):
                clean = await asyncio.gather(
                    *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(10))
                )
            batched = list(many)
            inserts = [sql for sql in inserts if sql.startswith("INSERT INTO counter")]
            many.clear()
            mixed = await asyncio.gather(
                *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(10, 20)),
                return_exceptions=True,
            )
        finally:
            Prepared.execute_many = real  # type: ignore[method-assign]
        assert clean == list(range(10))
        if db.dialect == "sqlite":
            assert max(batched) > 1  # rows of several works in one execute_many
        else:
            assert 1 <= len(inserts) < 10  # rows of several works in one statement
        # Outside a group commit: at once, so the same transaction reads the row back.
        async with db.write() as s:
            conn = await s.connection()
            assert id(conn) not in prepared_module._deferring
            await insert.execute_later(conn, [{"id": 5000, "value": 0}])
            seen = (await s.execute(select(COUNTER.c.id).where(COUNTER.c.id == 5000))).all()
        async with db.read() as s:
            value = int(
                (await s.execute(select(COUNTER.c.value).where(COUNTER.c.id == 1))).scalar_one()
            )
            ids = set((await s.execute(select(COUNTER.c.id))).scalars())
        await db.dispose()
        return list(mixed), value, ids, len(seen)

    mixed, value, ids, seen = run(go())
    failed = [i for i, m in enumerate(mixed, start=10) if isinstance(m, IntegrityError)]
    assert len(failed) == 1 and failed[0] in (13, 17)
    assert [m for m in mixed if not isinstance(m, IntegrityError)] == [
        i for i in range(10, 20) if i != failed[0]
    ]
    assert value == 19  # the twin's bump was rolled back with it
    assert ids == {1, 5000} | {1000 + i for i in range(20) if i not in (17,)}
    assert seen == 1


def test_write_batched_shares_commits(database_url: str) -> None:
    """Works that arrive together commit together, on both backends; each caller gets its own
    work's result, and a prepared statement (no SQLAlchemy statement at all) commits too."""
    from bizmsg.kit.prepared import Prepared

    bump = Prepared(COUNTER.update().values(value=COUNTER.c.value + 1))

    async def go() -> tuple[list[int], int, int]:
        db = Database(database_url)
        await _setup(db)

        async def work(i: int, conn) -> int:  # type: ignore[no-untyped-def]
            await bump.execute(conn, {})
            return i

        with _commits(db) as commits:
            got = await asyncio.gather(
                *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(40))
            )
        async with db.read() as s:
            value = int((await s.execute(select(COUNTER.c.value))).scalar_one())
        await db.dispose()
        return list(got), value, commits[0]

    got, value, commits = run(go())
    assert got == list(range(40))
    assert value == 40
    assert 1 <= commits < 20


def test_tally_reads_a_count_once_per_batch_and_writes_its_total(database_url: str) -> None:
    """Works of one group commit that add to the same count (Tally) run the upsert once per
    key and count the rest in memory; each gets the exact count, and the total is written
    before the commit. A work that fails rolls back the batch with its counts; the batch runs
    again without a tally (each add its own upsert), so the failed work's add is undone alone.
    Outside a group commit each add is an upsert of its own."""
    from sqlalchemy.dialects import postgresql, sqlite

    from bizmsg.kit.prepared import Tally

    def upsert(insert):  # type: ignore[no-untyped-def]
        return (
            insert(COUNTER)
            .values(id=bindparam("key_id"), value=1)
            .on_conflict_do_update(index_elements=["id"], set_={"value": COUNTER.c.value + 1})
            .returning(COUNTER.c.value)
        )

    add = Prepared(upsert(sqlite.insert), postgresql=upsert(postgresql.insert))
    put = Prepared(
        COUNTER.update().where(COUNTER.c.id == bindparam("key_id")).values(value=bindparam("n"))
    )
    tally = Tally(put, ("key_id",), "n")
    upserts: list[int] = []

    async def count(conn: AsyncConnection, key_id: int) -> int:
        held = tally.add(conn, (key_id,))
        if held is not None:
            return held
        upserts.append(key_id)
        (value,) = await add.first(conn, {"key_id": key_id})
        tally.hold(conn, (key_id,), value)
        return int(value)

    async def go() -> tuple[list[int], list[int], list[object], dict[int, int], list[int]]:
        db = Database(database_url)
        await _setup(db)

        async def work(i: int, conn: AsyncConnection) -> int:
            got = await count(conn, 7 if i % 2 else 8)
            if i == 25:
                raise InvalidArgument([("i", "refused after counting")])
            return got

        first = await asyncio.gather(
            *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(20))
        )
        first_upserts = list(upserts)
        upserts.clear()
        mixed = await asyncio.gather(
            *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(20, 30)),
            return_exceptions=True,
        )
        async with db.write() as s:  # no group commit: an upsert per add
            conn = await s.connection()
            upserts.clear()
            outside = [await count(conn, 9), await count(conn, 9)]
        async with db.read() as s:
            rows = (await s.execute(select(COUNTER.c.id, COUNTER.c.value))).all()
        await db.dispose()
        return list(first), first_upserts, list(mixed), dict(rows), outside  # type: ignore[arg-type]

    first, first_upserts, mixed, values, outside = run(go())
    assert sorted(first[1::2]) == list(range(1, 11))  # key 7: exact counts, each once
    assert sorted(first[0::2]) == list(range(1, 11))  # key 8
    assert len(first_upserts) < 20  # at most one upsert per key and batch
    assert isinstance(mixed[5], InvalidArgument)
    ok = [m for i, m in enumerate(mixed) if i != 5]
    assert sorted(ok) == sorted([11, 12, 13, 14, 15, 11, 12, 13, 14])
    assert values == {1: 0, 7: 14, 8: 15, 9: 2}  # the failed work (key 7) is not counted
    assert outside == [1, 2]
    assert upserts == [9, 9]


def test_total_applies_a_batch_sum_once_and_a_refused_sum_fails_only_what_does_not_fit(
    database_url: str,
) -> None:
    """Works of one group commit that add amounts to the same guarded row (Total) run its
    UPDATE once per row with the sum. When the guard refuses a sum, the batch runs again work
    by work, each with its own amount: exactly the works that do not fit fail, with their own
    error. Outside a group commit nothing is deferred."""
    from bizmsg.kit.errors import FailedPrecondition
    from bizmsg.kit.prepared import Total

    cap = 100
    add = Prepared(
        COUNTER.update()
        .where(
            (COUNTER.c.id == bindparam("key_id")) & (COUNTER.c.value + bindparam("amount") <= cap)
        )
        .values(value=COUNTER.c.value + bindparam("amount"))
    )
    total = Total(add, "amount")
    runs: list[int] = []
    real = Prepared.execute

    async def counting(self, conn, params):  # type: ignore[no-untyped-def]
        if self is add:
            runs.append(params["amount"])
        return await real(self, conn, params)

    async def work(i: int, conn: AsyncConnection) -> int:
        params = {"key_id": 1 + i % 2, "amount": 7}
        if not total.add(conn, params) and await add.execute(conn, params) != 1:
            raise FailedPrecondition("FULL", f"{i} does not fit")
        return i

    async def go() -> tuple[list[int], list[object], list[int], dict[int, int], bool]:
        db = Database(database_url)
        await _setup(db)
        async with db.write() as s:
            await s.execute(COUNTER.insert().values(id=2, value=0))
        Prepared.execute = counting  # type: ignore[method-assign]
        try:
            first = await asyncio.gather(
                *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(20))
            )
            first_runs = list(runs)
            mixed = await asyncio.gather(
                *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(20, 40)),
                return_exceptions=True,
            )
        finally:
            Prepared.execute = real  # type: ignore[method-assign]
        async with db.write() as s:
            conn = await s.connection()
            outside = total.add(conn, {"key_id": 1, "amount": 1})
        async with db.read() as s:
            rows = (await s.execute(select(COUNTER.c.id, COUNTER.c.value))).all()
        await db.dispose()
        return list(first), list(mixed), first_runs, dict(rows), outside  # type: ignore[arg-type]

    first, mixed, first_runs, values, outside = run(go())
    assert first == list(range(20))
    assert sum(first_runs) == 20 * 7 and len(first_runs) < 20  # sums: fewer UPDATEs than adds
    assert max(first_runs) > 7
    refused = [m for m in mixed if isinstance(m, FailedPrecondition)]
    assert all(m.reason == "FULL" for m in refused)
    # 70 + 4 * 7 = 98 fits under 100 on each row; the other 6 works of each row do not.
    assert len(refused) == 12
    assert len([m for m in mixed if isinstance(m, int)]) == 8
    assert values == {1: 98, 2: 98}
    assert outside is False


@contextmanager
def _commits(db: Database) -> Iterator[list[int]]:
    """Counts the COMMITs run in the block: on SQLite at the driver (group commit commits
    there, not through SQLAlchemy), on PostgreSQL through SQLAlchemy's event."""
    from sqlalchemy import event

    from bizmsg.kit import sqlite_inline

    count = [0]
    if db.dialect == "sqlite":

        def on_statement(sql: str) -> None:
            count[0] += sql.strip().upper() == "COMMIT"

        with sqlite_inline.traced(db.path, on_statement):
            yield count
        return

    def on_commit(_conn: object) -> None:
        count[0] += 1

    event.listen(db.engine.sync_engine, "commit", on_commit)
    try:
        yield count
    finally:
        event.remove(db.engine.sync_engine, "commit", on_commit)


def test_connect_holds_its_connection_and_sees_each_commit(database_url: str) -> None:
    """Single reads run on a connection held open (SQLite: one shared by every reader;
    PostgreSQL: one lent to each reader in turn, so readers one after the other get the same
    one); each read sees what committed before it, and a SQLAlchemy statement there (which
    would begin a transaction on the held connection) is refused."""
    from bizmsg.kit.prepared import Prepared

    read_value = Prepared(select(COUNTER.c.value).where(COUNTER.c.id == 1))

    async def go() -> tuple[list[int], bool, bool]:
        db = Database(database_url)
        await _setup(db)
        seen = []
        conns: list[AsyncConnection] = []
        for _ in range(3):
            async with db.write() as s:
                await s.execute(COUNTER.update().values(value=COUNTER.c.value + 1))
            async with db.connect() as conn:
                conns.append(conn)
                seen.append((await read_value.first(conn, {})).value)
        refused = False
        try:
            async with db.connect() as conn:
                await conn.execute(select(COUNTER.c.value))
        except RuntimeError:
            refused = True
        try:  # the same, and the block fails as well: its own error, and nothing left open
            async with db.connect() as conn:
                await conn.execute(select(COUNTER.c.value))
                raise ValueError("the caller's own error")
        except ValueError:
            pass
        async with db.connect() as conn:
            clean = not conn.in_transaction()
            await read_value.first(conn, {})  # the next reader is not blamed
        await db.dispose()
        return seen, all(c is conns[0] for c in conns) and refused, clean

    seen, held_and_refused, clean = run(go())
    assert seen == [1, 2, 3]
    assert held_and_refused
    assert clean


SLEEP = Prepared(select(func.pg_sleep(bindparam("seconds", type_=Float))))
READ_VALUE = Prepared(select(COUNTER.c.value).where(COUNTER.c.id == 1))


def _skip_sqlite(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL only: SQLite's readers share one connection")


async def _backends(database_url: str, *, running: str = "") -> int:
    """Server connections to the test's database (but this one's), or those whose statement
    running now contains `running`."""
    conn = await asyncpg.connect(postgres_url(database_url, driver="postgresql"))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND ($1 = '' OR (state = 'active'"
                " AND strpos(query, $1) > 0))",
                running,
            )
        )
    finally:
        await conn.close()


async def _settle(database_url: str, *, at_most: int, running: str = "") -> int:
    """The count of _backends once it is at most `at_most`, or after 5 s (a closed connection's
    server process ends a moment after the client let it go)."""
    for _ in range(100):
        count = await _backends(database_url, running=running)
        if count <= at_most:
            break
        await asyncio.sleep(0.05)
    return count


def test_concurrent_readers_use_at_most_pool_size_connections(database_url: str) -> None:
    """More readers than the pool's size all complete; no two of them share a connection at
    once (asyncpg runs one statement at a time), and at most pool_size server connections
    serve them."""
    _skip_sqlite(database_url)

    async def go() -> tuple[list[int], int, int, bool]:
        db = Database(database_url, pool_size=3)
        await _setup(db)
        lent: set[int] = set()
        used: list[AsyncConnection] = []  # kept referenced, so that their ids stay theirs
        shared = False
        most = 0
        done = asyncio.Event()

        async def reader() -> int:
            nonlocal shared
            async with db.connect() as conn:
                shared |= id(conn) in lent
                lent.add(id(conn))
                if conn not in used:
                    used.append(conn)
                await SLEEP.rows(conn, {"seconds": 0.05})
                value = int((await READ_VALUE.first(conn, {})).value)
                lent.discard(id(conn))
            return value

        async def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, await _backends(database_url))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            values = await asyncio.gather(*(reader() for _ in range(20)))
        finally:
            done.set()
            await watcher
        await db.dispose()
        return list(values), len(used), most, shared

    values, connections, most, shared = run(go())
    assert values == [0] * 20
    assert not shared
    assert connections <= 3
    assert 1 <= most <= 3  # _setup's connection went back to the pool; readers reuse it


def test_a_reader_that_fails_or_is_cancelled_gives_no_connection_back(database_url: str) -> None:
    """A block that raises, or is cancelled while its statement runs (asyncpg's connection is
    then in an unknown state), drops its connection: the next reader gets another one, and
    reads. With one slot, that is also the proof the slot was freed."""
    _skip_sqlite(database_url)

    async def go() -> tuple[bool, bool, int, int]:
        db = Database(database_url, pool_size=1)
        await _setup(db)
        async with db.connect() as first:
            await READ_VALUE.first(first, {})
        with pytest.raises(ValueError):
            async with db.connect() as conn:
                assert conn is first  # held: the same one again
                await READ_VALUE.first(conn, {})
                raise ValueError("the caller's own error")
        async with asyncio.timeout(5), db.connect() as after_error:
            await READ_VALUE.first(after_error, {})
        started = asyncio.Event()

        async def sleeper() -> None:
            async with db.connect() as conn:
                started.set()
                await SLEEP.rows(conn, {"seconds": 5.0})  # cancelled in here

        task = asyncio.create_task(sleeper())
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5), db.connect() as after_cancel:  # well before pg_sleep ends
            value = int((await READ_VALUE.first(after_cancel, {})).value)
        sleeping = await _settle(database_url, at_most=0, running="pg_sleep")
        await db.dispose()
        left = await _settle(database_url, at_most=0)
        return after_error is not first, after_cancel is not after_error, sleeping, value + left

    fresh_after_error, fresh_after_cancel, sleeping, value_and_left = run(go())
    assert fresh_after_error and fresh_after_cancel
    assert sleeping == 0  # the cancelled statement's connection is gone from the server
    assert value_and_left == 0


def test_dispose_closes_the_readers_connections(database_url: str) -> None:
    """dispose() closes the idle held connections at once; one lent to a reader then is closed
    when the reader gives it back. Nothing is left open on the server."""
    _skip_sqlite(database_url)

    async def go() -> tuple[int, int, int]:
        db = Database(database_url, pool_size=3)
        await _setup(db)

        async def reader() -> None:
            async with db.connect() as conn:
                await SLEEP.rows(conn, {"seconds": 0.05})

        await asyncio.gather(*(reader() for _ in range(3)))  # three held, idle
        before = await _backends(database_url)
        reading, release = asyncio.Event(), asyncio.Event()

        async def lent_across_dispose() -> None:
            async with db.connect() as conn:
                reading.set()
                await release.wait()
                await READ_VALUE.first(conn, {})

        task = asyncio.create_task(lent_across_dispose())
        await reading.wait()
        await db.dispose()
        during = await _settle(database_url, at_most=1)
        release.set()
        await task
        await db.dispose()
        return before, during, await _settle(database_url, at_most=0)

    before, during, after = run(go())
    assert before == 3
    assert during == 1  # the one still lent
    assert after == 0


def test_write_batched_skips_a_caller_that_went_away(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def go() -> int:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gone.db'}")
        await _setup(db)

        async def bump(s) -> None:  # type: ignore[no-untyped-def]
            await s.execute(COUNTER.update().values(value=COUNTER.c.value + 1))

        async with db.write():  # hold the lock so the batch waits
            gone = asyncio.ensure_future(db.write_batched(bump))
            stays = asyncio.ensure_future(db.write_batched(bump))
            await asyncio.sleep(0.01)
            gone.cancel()
        await stays
        async with db.read() as s:
            value = int((await s.execute(select(COUNTER.c.value))).scalar_one())
        await db.dispose()
        return value

    assert run(go()) == 1


def test_write_batched_runs_each_work_in_its_callers_context(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The principal (and any other context variable) a work sees is its own caller's, even
    though the works of a batch run one after the other in the batcher."""
    from bizmsg.kit.auth import current_principal

    async def go() -> list[tuple[str, str]]:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'ctx.db'}")
        await _setup(db)

        async def call(name: str) -> tuple[str, str]:
            set_current_principal(Principal.parse(f"business:{name}"))

            async def work(_s) -> str:  # type: ignore[no-untyped-def]
                return str(current_principal())

            return name, await db.write_batched(work)

        async with db.write():  # hold the lock so all of them land in one batch
            calls = [asyncio.ensure_future(call(f"b{i}")) for i in range(5)]
            await asyncio.sleep(0.01)
        got = await asyncio.gather(*calls)
        await db.dispose()
        return got

    for name, seen in run(go()):
        assert seen == f"business:{name}"


def test_a_work_that_suspends_keeps_its_context_and_can_be_cancelled_with_the_batcher() -> None:
    """Works run inside the batcher's task (kit.loop.run_in_context), not in a task each: one
    that suspends mid-way still sees its caller's context variables when it resumes, gets
    what it awaited, and a cancellation of the batcher reaches into it."""
    import contextvars

    from bizmsg.kit.loop import run_in_context

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="batcher")

    async def work(waiter: asyncio.Future[int]) -> tuple[str, int, str]:
        before = var.get()
        got = await waiter
        await asyncio.sleep(0)
        return before, got, var.get()

    async def go() -> None:
        var.set("caller")
        ctx = contextvars.copy_context()
        var.set("batcher")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, waiter.set_result, 7)
        assert await run_in_context(ctx, work(waiter)) == ("caller", 7, "caller")
        assert var.get() == "batcher"

        cleaned: list[str] = []

        async def hangs() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                cleaned.append(var.get())

        async def batcher() -> None:
            await run_in_context(ctx, hangs())

        task = asyncio.ensure_future(batcher())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["caller"]

    run(go())


@pytest.mark.parametrize(
    ("server", "plain", "named"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_db",
        ),
        (
            "postgresql+asyncpg://bench:s3cret@db.internal/postgres?ssl=require",
            "postgresql://bench:s3cret@db.internal/postgres?ssl=require",
            "postgresql+asyncpg://bench:s3cret@db.internal/bench_db?ssl=require",
        ),
        # A Unix socket is a query parameter, after the database's name: it must stay.
        (
            "postgresql://postgres@/postgres?host=/var/run/postgresql",
            "postgresql://postgres@/postgres?host=%2Fvar%2Frun%2Fpostgresql",
            "postgresql+asyncpg://postgres@/bench_db?host=%2Fvar%2Frun%2Fpostgresql",
        ),
    ],
)
def test_postgres_url_names_another_database_and_keeps_the_query(
    server: str, plain: str, named: str
) -> None:
    assert postgres_url(server, driver="postgresql") == plain
    assert postgres_url(server, database="bench_db") == named


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///x.db", "mysql://root@localhost/x", "nope"])
def test_postgres_url_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        postgres_url(url)
