"""SQLite for SQLAlchemy's asyncio engine, run on the event loop's own thread.

aiosqlite sends every statement to a worker thread and wakes the loop when it is done: two
thread hand-offs per statement, which cost more CPU than the statement itself (a primary-key
read or a one-row insert takes microseconds; profiles of SendMessage put 26 % of delivery's CPU
in aiosqlite). SQLite is a library, not a server: with WAL, synchronous=NORMAL and automatic
checkpoints moved off the loop (see storage.py), a statement never waits for the disk. The one
wait left is for another process's write lock; that wait is not a blocking busy handler here but
an `await asyncio.sleep` between retries, so the loop keeps serving.

The classes below give SQLAlchemy's aiosqlite adapter the awaitable API it expects (the subset
of aiosqlite it calls); pass `connect` as `async_creator`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# How long a statement keeps retrying while another process holds the write lock.
BUSY_TIMEOUT = 30.0
_FIRST_BACKOFF = 0.001
_MAX_BACKOFF = 0.05


def busy(e: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the lock (retry later)."""
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(e)


async def _retry_busy(run: Callable[[], Any]) -> Any:
    """Run `run`; while SQLite says another connection holds the lock, sleep and retry.

    A statement that failed with SQLITE_BUSY had no effect, so running it again is safe (BEGIN
    IMMEDIATE is where writers wait; in WAL mode readers are not blocked)."""
    try:
        return run()
    except sqlite3.OperationalError as e:
        if not busy(e):
            raise
    deadline = time.monotonic() + BUSY_TIMEOUT
    backoff = _FIRST_BACKOFF
    while True:
        await asyncio.sleep(backoff)
        try:
            return run()
        except sqlite3.OperationalError as e:
            if not busy(e) or time.monotonic() >= deadline:
                raise
        backoff = min(backoff * 2, _MAX_BACKOFF)


def _closing(cursor: sqlite3.Cursor, take: Callable[[sqlite3.Cursor], Any]) -> Any:
    try:
        return take(cursor)
    finally:
        cursor.close()


def _fetchall(cursor: sqlite3.Cursor) -> list[Any]:
    return cursor.fetchall()


def _rowcount(cursor: sqlite3.Cursor) -> int:
    return cursor.rowcount


class Cursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        await _retry_busy(lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        rows = list(parameters)  # may be retried, so not a one-shot iterator
        await _retry_busy(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *_: Any) -> None:
        return None

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class Connection:
    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        # SQLAlchemy's adapter checks `_connection` before commit and rollback.
        self._connection: sqlite3.Connection | None = conn
        self.path = path
        _open.setdefault(path, weakref.WeakSet()).add(self)
        _set_trace(self)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return self._connection

    def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        return await Cursor(self._conn.cursor()).execute(sql, parameters)

    # The three below are bizmsg.kit.prepared's, on every hot path: straight on the driver's
    # own cursor, without this module's Cursor (its async context and wrapper cost more than
    # a primary-key statement takes in SQLite).

    def run_now(self, kind: str, sql: str, parameters: Any) -> Any:
        """The statement run at once: its rows ("rows"), how many rows it changed ("count"), or
        run once per row of `parameters` ("many"). Raises SQLITE_BUSY (see `busy`) for the
        caller to retry with `run`: the hot paths call this first, with no coroutine around it."""
        conn = self._conn
        if kind == "rows":
            return _closing(conn.execute(sql, parameters), _fetchall)
        if kind == "count":
            return _closing(conn.execute(sql, parameters), _rowcount)
        return _closing(conn.executemany(sql, parameters), _rowcount)

    async def run(self, kind: str, sql: str, parameters: Any) -> Any:
        """run_now, retried (on the loop) while another process holds the lock."""
        return await _retry_busy(lambda: self.run_now(kind, sql, parameters))

    async def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return await self.run("rows", sql, parameters)  # type: ignore[no-any-return]

    async def execute_count(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Runs a statement returning no rows; how many rows it changed."""
        return await self.run("count", sql, parameters)  # type: ignore[no-any-return]

    async def execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        await self.run("many", sql, rows)

    async def begin(self, immediate: bool) -> None:
        """Open a transaction; IMMEDIATE takes the write lock now (waiting for it here)."""
        sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        await _retry_busy(lambda: self._conn.execute(sql))

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    # Group commit's per-work savepoints (storage.write_batched), straight on the driver.
    def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT work")

    def release_savepoint(self) -> None:
        self._conn.execute("RELEASE work")

    def rollback_to_savepoint(self) -> None:
        self._conn.execute("ROLLBACK TO work")
        self._conn.execute("RELEASE work")

    async def commit(self) -> None:
        await _retry_busy(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level


# Instrumentation for tests and benches: every statement SQLite runs on a file, whichever code
# sent it (SQLAlchemy, bizmsg.kit.prepared, BEGIN/COMMIT).
_open: dict[str, weakref.WeakSet[Connection]] = {}
_tracers: dict[str, list[Callable[[str], None]]] = {}


ANY_FILE = "*"  # traced(ANY_FILE, ...): every file


def _set_trace(conn: Connection) -> None:
    if conn._connection is None:
        return
    tracers = _tracers.get(conn.path, []) + _tracers.get(ANY_FILE, [])
    if not tracers:
        conn._connection.set_trace_callback(None)
        return
    listening = list(tracers)
    conn._connection.set_trace_callback(lambda sql: [t(sql) for t in listening])


@contextmanager
def traced(path: str, callback: Callable[[str], None]) -> Iterator[None]:
    """Calls `callback` with every statement run on any connection to the file at `path` (or
    to any file, with ANY_FILE), open now or opened before the block ends."""
    _tracers.setdefault(path, []).append(callback)
    try:
        _retrace(path)
        yield
    finally:
        _tracers[path].remove(callback)
        _retrace(path)


def _retrace(path: str) -> None:
    for p, conns in list(_open.items()):
        if path in (p, ANY_FILE):
            for conn in list(conns):
                _set_trace(conn)


def connector(path: str) -> Callable[[], Any]:
    """An `async_creator` for create_async_engine: a connection to the file at `path`.

    isolation_level=None: the driver opens no transactions of its own; storage.py issues
    BEGIN / BEGIN IMMEDIATE. timeout=0: waiting for another process's lock is _retry_busy's
    job, on the loop, not the driver's blocking busy handler."""

    async def connect() -> Connection:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        return Connection(conn, path)

    return connect
