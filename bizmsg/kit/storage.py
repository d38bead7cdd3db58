"""SQLAlchemy 2 (asyncio) set-up shared by every service.

SQLite is the embedded default: WAL, synchronous=NORMAL, statements run on the event loop's
thread (sqlite_inline.py: no thread hand-off per statement), write transactions opened with
BEGIN IMMEDIATE so writers queue on the lock instead of failing on a read-to-write upgrade.
Within one process, writers also queue on an asyncio lock first: it hands over at once, where
waiting on SQLite's lock means polling. Automatic checkpoints are off on the serving
connections; `checkpoint()` (run by the server every second) copies the WAL back into the
database from a worker thread, so the loop never waits for an fsync. PostgreSQL (asyncpg) when
a URL says so. Each service owns one database and migrates it with its own Alembic scripts at
start-up.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, TypeVar

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, event, make_url, pool
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import DateTime, TypeDecorator
from sqlalchemy.util import await_

from bizmsg.kit import sqlite_inline
from bizmsg.kit.errors import Unavailable
from bizmsg.kit.loop import gather_arrivals, run_in_context
from bizmsg.kit.prepared import deferring, flush_deferred, raw_connection
from bizmsg.kit.timeutil import utc

T = TypeVar("T")
# A work of a group commit (write_batched), and its caller's future.
Work = tuple[Callable[[AsyncConnection], Awaitable[Any]], asyncio.Future[Any]]
_WRITE = "bizmsg_write"
# How long a writer waits for its turn on SQLite before the caller gets UNAVAILABLE.
WRITE_QUEUE_TIMEOUT = 30.0
# Loop turns a group commit waits before it takes its batch. Under load each turn runs the
# callbacks that are ready (answers from other services, new calls), and the writes they lead
# to join the batch. Measured in delivery under `bizmsg bench --quick --only send`: 1.4-1.7
# messages per commit with one turn, 2.4-2.5 with 8, 2.7-2.9 with 16, 3.0 with 32. Idle, a turn
# costs a few microseconds. Since then the wait goes on while works keep coming, until that
# many turns in a row bring none, at most GATHER_MOST_TURNS (bizmsg.kit.loop.gather_arrivals,
# as the stream writers do): six alternated `--quick --only null,send` pairs, SendMessage / null
# at the peak 0.83, 0.86, 0.87, 0.83, 0.82, 0.92 against 0.78, 0.86, 0.80, 0.80, 0.79, 0.83
# with a fixed 8; c=16 unchanged.
GATHER_TURNS = 8
GATHER_MOST_TURNS = 32
# SQLite: bytes a WAL file keeps once it starts again (a checkpoint copied all of it).
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# PostgreSQL: seconds a connection lives, in the pool and held for single reads (connect()).
RECYCLE = 300


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which has no time zones) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        v = utc(value)
        return v.replace(tzinfo=None) if dialect.name == "sqlite" else v

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else utc(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite stores the text SQLAlchemy's DATETIME would ("YYYY-MM-DD HH:MM:SS.ffffff", in
        # UTC), made in one step by datetime.isoformat (C) instead of two (to naive UTC, then
        # %-formatting): every message binds several datetimes, and py-spy put the two steps
        # at about 5 % of delivery's CPU. tests/kit/test_storage.py checks the text is the same.
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is UTC:  # the usual case: the clock's; "+00:00" cut off
                return value.isoformat(" ", "microseconds")[:-6]
            if value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            return value.isoformat(" ", "microseconds")

        return process


def postgres_url(
    url: str, *, database: str | None = None, driver: str = "postgresql+asyncpg"
) -> str:
    """A PostgreSQL server's URL (asyncpg's `postgresql://` or SQLAlchemy's spelling) for
    `driver`, naming `database` instead of its own when given. Parsed, not cut at the last '/':
    a query such as `?host=/var/run/postgresql` (a Unix socket) or `?ssl=require` is kept.
    ValueError when `url` is not a PostgreSQL URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ValueError(f"not a database URL: {url!r}") from e
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    parsed = parsed.set(drivername=driver)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def postgres_execute(url: str, sql: str, *, connect_timeout: float = 60.0) -> None:
    """Runs one statement on the PostgreSQL server at `url` (either spelling) on a connection
    of its own, outside any transaction: CREATE and DROP DATABASE, ANALYZE. `connect_timeout`:
    seconds to reach the server (asyncpg's default unless given)."""
    import asyncpg  # only the tools that administer a server need it

    conn = await asyncpg.connect(postgres_url(url, driver="postgresql"), timeout=connect_timeout)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _sqlite_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver opens no transactions (sqlite_inline.connector), so BEGIN is ours (see
        # on_begin); lock waits are retried on the loop, so no blocking busy_timeout here.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA wal_autocheckpoint=0")
        # When the WAL starts again after a burst made it long, the file is cut back to this.
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        # Straight to the driver: BEGIN through exec_driver_sql costs a whole statement
        # execution in SQLAlchemy, more than the BEGIN itself.
        driver: sqlite_inline.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        if not driver.in_transaction:  # else group commit began it on the driver: join it
            await_(driver.begin(immediate))


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.dialect = "sqlite"
            self.path = make_url(url).database or ""
            self.engine = create_async_engine(
                url,
                async_creator=sqlite_inline.connector(self.path),
                poolclass=pool.AsyncAdaptedQueuePool,
                pool_size=pool_size,
                max_overflow=0,
            )
            _sqlite_setup(self.engine)
        else:
            self.dialect = "postgresql"
            self.path = ""
            # No pre-ping: it costs three round trips per checkout. Connections are recycled
            # instead, and one that died under us surfaces as UNAVAILABLE (see interceptors).
            self.engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=RECYCLE
            )
        self._writer = self.engine.execution_options(**{_WRITE: True})
        self._write_queue = asyncio.Lock() if self.dialect == "sqlite" else None
        self._write_conn: AsyncConnection | None = None  # SQLite: the writers' connection
        self._write_sessions = async_sessionmaker(self._writer, expire_on_commit=False)
        self._held_sessions = self._write_sessions
        # SQLite group commit (write_batched): works waiting for the next transaction.
        self._batch: list[Work] = []
        self._batcher: asyncio.Future[None] | None = None
        self._read_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # connect(): on SQLite one held connection (its driver opens no transaction for
        # prepared statements); on PostgreSQL, AUTOCOMMIT spares each read the BEGIN and
        # ROLLBACK round trips that SQLAlchemy's asyncpg adapter would wrap around it.
        self._read_conn: AsyncConnection | None = None
        self._single_reads = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # PostgreSQL: up to pool_size connections held open for connect(), each lent to one
        # reader at a time; a slot is a reader holding one. Idle ones (when each was opened)
        # are lent last-in first-out, so under light load the same few stay warm.
        self._reader_slots = asyncio.Semaphore(pool_size)
        self._idle_readers: list[tuple[float, AsyncConnection]] = []
        self._readers_disposed = 0.0  # time.monotonic() of the last dispose()
        self._sqlite_reader = _SharedReader(self)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One read-write transaction: committed when the block ends, rolled back on error."""
        if self._write_queue is None:
            async with self._transaction(self._write_sessions) as session:
                yield session
            return
        async with self._write_turn(), self._transaction(self._held_sessions) as session:
            yield session

    @asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[AsyncConnection]:
        """SQLite: this process's turn to write, on the writers' shared connection."""
        assert self._write_queue is not None
        try:
            async with asyncio.timeout(WRITE_QUEUE_TIMEOUT):
                await self._write_queue.acquire()
        except TimeoutError as e:
            raise Unavailable("DATABASE_BUSY", "the database is busy; retry", retry_after=1) from e
        try:
            if self._write_conn is None:
                # Writers take turns, so they share one connection: no pool checkout per call.
                self._write_conn = await self._writer.connect()
                self._held_sessions = async_sessionmaker(
                    bind=self._write_conn, expire_on_commit=False
                )
            yield self._write_conn
        finally:
            self._write_queue.release()

    async def write_batched(self, work: Callable[[AsyncConnection], Coroutine[Any, Any, T]]) -> T:
        """`work` run with a connection in a read-write transaction, answered only once that
        transaction has committed.

        On SQLite, calls that arrive while another transaction holds the write lock share the
        next transaction (group commit). The batch runs without savepoints; if a work raises, it
        runs again with a SAVEPOINT per work, so the one that raised is rolled back alone and
        its caller gets the exception; the others commit together.
        A transaction costs several times a statement, and SQLite writes one at a time anyway,
        so under load this is most of a writer's database time saved and no guarantee lost.
        A caller that goes away before its work starts is skipped; once started, the work
        commits with its batch.

        On PostgreSQL the works that arrive while a batch runs share the next transaction too,
        without savepoints (two round trips each): if any work raises, or the commit fails (a
        deadlock with another replica's batch, say), the batch is rolled back and each of its
        works runs again alone, in a transaction of its own. Works are written to be run again
        (they hold no state across runs). Under load this saves a commit (a WAL flush) per
        call and holds hot rows (a sender's sequence, a wallet) once per batch, not per call.

        On both, when a batch has several works, what they defer goes in together just before
        the commit (bizmsg.kit.prepared): the rows they insert with Prepared.execute_later (one
        execute_many per statement), the counts they add to (Tally) and the amounts they add to
        a guarded row (Total, one UPDATE per row with the sum); a failure there counts as a
        work's, so the batch runs again work by work, deferring nothing.

        `work` gets the connection, not an ORM session: the hot paths that use this run Core
        and prepared statements only, and a session's begin, flush bookkeeping, commit and
        close cost several greenlet switches per transaction (about 0.4 ms of CPU on SQLite,
        more than the statements). On SQLite the transaction is begun and committed on the
        driver; a SQLAlchemy statement in a work joins it (see on_begin).
        """
        return await self.submit_batched(work)

    def submit_batched(
        self, work: Callable[[AsyncConnection], Coroutine[Any, Any, T]]
    ) -> asyncio.Future[T]:
        """write_batched's `work`, queued for the next group commit: the future of its outcome.
        A caller that must learn the outcome even if it goes away awaits it through
        asyncio.shield (the work then runs whatever happens to the caller); awaited directly,
        a caller's cancellation cancels it, and a work not yet started is skipped."""
        # The running batcher's loop is this one (asyncio.get_running_loop() costs a getpid()
        # system call on Python 3.11; under load a batcher is nearly always running).
        batcher = self._batcher
        loop = asyncio.get_running_loop() if batcher is None else batcher.get_loop()
        future: asyncio.Future[T] = loop.create_future()
        # The work runs in the caller's context (principal, request id, deadline), not the
        # batcher's, inside the batcher's task (no task per work).
        ctx = contextvars.copy_context()
        self._batch.append((lambda s: run_in_context(ctx, work(s)), future))
        if self._batcher is None:
            self._batcher = asyncio.ensure_future(self._run_batches())
        return future

    def _waiting(self) -> int:
        return len(self._batch)

    async def _run_batches(self) -> None:
        try:
            while self._batch:
                # A few turns of the loop first: under load the loop holds answers from other
                # services and new calls, and the writes they lead to join this batch.
                await gather_arrivals(self._waiting, GATHER_TURNS, GATHER_MOST_TURNS)
                batch: list[Work] = []
                try:
                    async with self._batch_connection() as conn:
                        # Taken once the lock is ours: whoever came while we waited joins too.
                        batch = [(w, f) for w, f in self._batch if not f.done()]
                        self._batch = []
                        run = _run_each if self.dialect == "sqlite" else _run_together
                        outcomes = await run(conn, batch)
                except Exception as e:
                    _fail(batch, e)  # the transaction itself failed: no work of it stands
                    continue
                except BaseException as e:
                    _fail(batch, e)
                    raise
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
        except BaseException as e:  # cancelled: the service is stopping
            _fail(self._batch, e)
            self._batch = []
            raise
        finally:
            self._batcher = None

    async def _close(self, closing: Coroutine[Any, Any, None]) -> None:
        """Gives a connection back to the pool, also when the caller is being cancelled. On
        SQLite this runs to the end without suspending (sqlite_inline never waits here), so no
        cancellation can land in it and no shield is needed (a shield costs a task per call);
        on PostgreSQL the round trip is shielded."""
        await (closing if self.dialect == "sqlite" else asyncio.shield(closing))

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection outside any transaction, for single reads by prepared statements
        (bizmsg.kit.prepared): each statement reads the newest committed state, with no
        BEGIN/COMMIT and no session around it. Not for several reads that must agree: use
        read() for a snapshot."""
        if self.dialect == "sqlite":
            return self._sqlite_reader
        return self._lent_reader()

    @asynccontextmanager
    async def _lent_reader(self) -> AsyncIterator[AsyncConnection]:
        # PostgreSQL: a held connection, no pool checkout and return per read (measured: 271-295
        # us of client CPU per read that way, 85-93 us on a held one). Lent to this reader alone:
        # asyncpg runs one statement at a time per connection.
        await self._reader_slots.acquire()
        try:
            if self._idle_readers:
                opened, conn = self._idle_readers.pop()
            else:
                opened = time.monotonic()
                conn = await self._single_reads.connect()
            kept = began = False
            try:
                yield conn
                began = conn.in_transaction()
                # Kept only if healthy: not invalidated (a statement cancelled midway leaves
                # asyncpg's connection in an unknown state, and prepared.py invalidates it) and
                # with no SQLAlchemy transaction begun (refused below, as on SQLite; the next
                # reader's statements would run in it). A block that raised (or was cancelled)
                # drops it too: what it left the connection in is not known here. Dropped means
                # back to the pool, which costs a later reader one checkout, not a new server
                # connection.
                kept = not (began or conn.invalidated or conn.closed)
            finally:
                if kept and opened > max(self._readers_disposed, time.monotonic() - RECYCLE):
                    self._idle_readers.append((opened, conn))
                elif opened < self._readers_disposed and not conn.closed:
                    # Lent across a dispose(): its pool was closed, and would keep it open.
                    await self._close(conn.invalidate())
                else:
                    await self._close(conn.close())  # back to the pool, which recycles it
        finally:
            self._reader_slots.release()
        if began:
            raise RuntimeError("Database.connect() is for prepared statements only")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """One read transaction: a consistent snapshot, nothing written."""
        async with self._transaction(self._read_sessions) as session:
            yield session

    @asynccontextmanager
    async def _batch_connection(self) -> AsyncIterator[AsyncConnection]:
        """Where a batch runs: SQLite's writer turn; a pooled connection on PostgreSQL."""
        if self._write_queue is not None:
            async with self._write_turn() as held:
                yield held
            return
        async with self._pooled(self._writer) as conn:
            yield conn

    @asynccontextmanager
    async def _pooled(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """A connection from the pool, given back also when the caller is cancelled."""
        conn = await engine.connect()
        try:
            yield conn
        finally:
            await self._close(conn.close())

    @asynccontextmanager
    async def _transaction(
        self, maker: async_sessionmaker[AsyncSession]
    ) -> AsyncIterator[AsyncSession]:
        session = maker()
        try:
            await session.begin()
            yield session
            await session.commit()
        except BaseException:
            # A cancelled call (client gone, deadline, shutdown) must still give its connection
            # back clean: shield the rollback from a second cancellation.
            await asyncio.shield(session.rollback())
            raise
        finally:
            await self._close(session.close())

    async def checkpoint(self) -> None:
        """Copy SQLite's WAL back into the database file (PASSIVE: never waits for readers or
        writers), in a worker thread with its own connection, so the loop is not held up by
        the fsync. Does nothing on PostgreSQL.

        It runs in this process's writers' turn: the WAL starts again from its beginning only
        after a checkpoint has copied all of it, and a checkpoint running beside a writer never
        catches up with the WAL's end, so under steady load the WAL grew without bound (136 MB
        in 10 s of SendMessage at 1,500 a second, on a file that kept growing). Writers wait
        meanwhile (the next group commit is bigger for it); readers do not."""
        if self.dialect == "sqlite":
            async with self._write_turn():
                await asyncio.to_thread(_checkpoint, self.path)

    async def migrate(self, script_location: str) -> None:
        """Bring the schema to the newest revision of the service's Alembic scripts."""
        cfg = Config()
        cfg.set_main_option("script_location", script_location)

        def upgrade(conn: Connection) -> None:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def dispose(self) -> None:
        # Readers that hold a connection now close it when they give it back (see connect()).
        self._readers_disposed = time.monotonic()
        idle, self._idle_readers = self._idle_readers, []
        for held in (self._write_conn, self._read_conn, *(conn for _, conn in idle)):
            if held is not None:
                await held.close()
        self._write_conn = self._read_conn = None
        await self.engine.dispose()


class _SharedReader:
    """SQLite's connect(): one connection shared by every reader, held open, so no pool
    checkout and return (two greenlet switches) per call. Sharing is safe because nothing opens
    a transaction on it and a statement on SQLite runs to its end without suspending, so
    readers' statements never interleave mid-way. A class, not a generator-based context
    manager: it holds no state of one use, so one object serves every call (a generator and
    its context manager per read cost 2 % of delivery's loop under load)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __aenter__(self) -> AsyncConnection:
        db = self._db
        if db._read_conn is None:
            db._read_conn = await db.engine.connect()
        return db._read_conn

    async def __aexit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        conn = self._db._read_conn
        # A SQLAlchemy statement began a transaction: end it, or every later reader would read
        # its snapshot. (Asked of the sync connection: the async one's in_transaction() goes
        # through three proxies, on every read.)
        sync = None if conn is None else conn.sync_connection
        if conn is not None and sync is not None and sync.in_transaction():
            await conn.rollback()
            if error_type is None:  # else the block's own error goes on
                raise RuntimeError("Database.connect() is for prepared statements only")


def _fail(batch: list[Work], error: BaseException) -> None:
    if not isinstance(error, Exception):  # cancelled: the service is stopping
        error = Unavailable("STOPPING", "the service is stopping; retry", retry_after=1)
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


async def _run_each(conn: AsyncConnection, batch: list[Work]) -> list[tuple[bool, Any]]:
    """SQLite: the batch in one transaction, on the driver (no SQLAlchemy round trip).

    First without savepoints: a savepoint makes SQLite copy every page a work changes into a
    statement journal, which cost a third of delivery's write transaction (a replay of it in
    raw sqlite3: 216 us per message with a savepoint per work, 136 without). If a work raises,
    the whole transaction is rolled back and, when the batch had other works, run again with a
    SAVEPOINT per work, so that only the failing one is rolled back (works are written to be run
    again, as on PostgreSQL). A batch of one needs no savepoint at all."""
    if not batch:
        return []
    driver: sqlite_inline.Connection = (await raw_connection(conn)).driver_connection
    outcomes = await _sqlite_transaction(conn, driver, batch, savepoints=False)
    if outcomes is None:
        outcomes = await _sqlite_transaction(conn, driver, batch, savepoints=True)
    assert outcomes is not None
    return outcomes


async def _sqlite_transaction(
    conn: AsyncConnection,
    driver: sqlite_inline.Connection,
    batch: list[Work],
    *,
    savepoints: bool,
) -> list[tuple[bool, Any]] | None:
    """The works in one transaction, committed; None when, without savepoints, a work of a batch
    of several (or their deferred inserts) raised (the transaction was rolled back). When a
    work ran a SQLAlchemy statement, SQLAlchemy joined the transaction; then SQLAlchemy ends
    it, so that it knows the transaction is over."""
    await driver.begin(True)
    try:
        outcomes: list[tuple[bool, Any]] = []
        # Without savepoints the works' deferred writes run together before the commit; a
        # failure there, too, sends the batch round again with savepoints and nothing deferred.
        # A work alone defers nothing: there is nothing to share, and its failure is its own.
        with nullcontext() if savepoints or len(batch) == 1 else deferring(conn):
            try:
                for work, _ in batch:
                    if savepoints:
                        driver.savepoint()
                    try:
                        value = await work(conn)
                    except Exception as e:
                        if not savepoints:
                            raise
                        driver.rollback_to_savepoint()
                        outcomes.append((False, e))
                    else:
                        if savepoints:
                            driver.release_savepoint()
                        outcomes.append((True, value))
                await flush_deferred(conn)  # nothing to do with savepoints (nothing deferred)
            except Exception as e:
                if savepoints:
                    raise  # not a work's failure (those were caught): the batch fails
                # Without savepoints nothing of the batch stands.
                await _rollback(conn, driver)
                return [(False, e)] if len(batch) == 1 else None
        if conn.in_transaction():
            await conn.commit()
        else:
            await driver.commit()
    except BaseException:
        # Nothing of the batch stands. Rolling back on SQLite never suspends, so it completes
        # even when the batcher is being cancelled.
        await _rollback(conn, driver)
        raise
    return outcomes


async def _rollback(conn: AsyncConnection, driver: sqlite_inline.Connection) -> None:
    if conn.in_transaction():
        await asyncio.shield(conn.rollback())
    elif driver.in_transaction:
        await driver.rollback()


async def _run_together(conn: AsyncConnection, batch: list[Work]) -> list[tuple[bool, Any]]:
    """PostgreSQL: the batch in one transaction; if that fails, each work in its own."""

    async def all_of_them() -> list[Any]:
        if len(batch) == 1:  # a work alone defers nothing: its failure is its own
            return [await batch[0][0](conn)]
        with deferring(conn):  # the works' deferred writes run together, before the commit
            values = [await work(conn) for work, _ in batch]
            await flush_deferred(conn)
        return values

    ok, values = await _in_transaction(conn, all_of_them)
    if ok:
        return [(True, value) for value in values]
    if len(batch) == 1:
        return [(False, values)]
    return [await _in_transaction(conn, functools.partial(work, conn)) for work, _ in batch]


async def _in_transaction(
    conn: AsyncConnection, run: Callable[[], Awaitable[Any]]
) -> tuple[bool, Any]:
    """(True, what `run` returned) once committed, or (False, the exception) rolled back."""
    try:
        await conn.begin()
        value = await run()
        await conn.commit()
    except Exception as e:
        await asyncio.shield(conn.rollback())
        return False, e
    except BaseException:
        await asyncio.shield(conn.rollback())  # as in Database._transaction
        raise
    return True, value


def _checkpoint(path: str) -> None:
    conn = sqlite3.connect(path, timeout=1.0)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def run_migrations_env(target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py (online mode, on the given connection)."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("migrations run through Database.migrate(), which passes a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
