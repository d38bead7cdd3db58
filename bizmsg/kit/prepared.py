"""Hot-path statements: a Core statement compiled once per dialect and run on the driver.

SQLAlchemy's asyncio execution path costs tens of microseconds per statement before the
database sees it (execution context, events, result objects, a greenlet switch per await):
more than SQLite takes to run a primary-key statement, and on PostgreSQL (measured) about
130 us of client CPU per statement against 57 us for asyncpg alone. The few statements every message
runs skip that: `Prepared` keeps the SQL text and the bind and result processors SQLAlchemy
compiled (so values go in and come out exactly as through SQLAlchemy: aware
UTC datetimes, booleans), and sends them on the connection's own driver inside the caller's
transaction. Everything else goes through SQLAlchemy as usual.
"""

from __future__ import annotations

import operator
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select, bindparam
from sqlalchemy.types import Float, Integer, Numeric, TypeEngine

from bizmsg.kit import bulk, sqlite_inline

_DIALECTS: dict[str, Dialect] = {
    "sqlite": aiosqlite.dialect(),
    "postgresql": asyncpg.dialect(),  # type: ignore[no-untyped-call]
}
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind parameter names in positional order
    binds: tuple[Processor, ...]
    defaults: dict[str, Any]  # what a parameter is when the caller does not give it
    results: tuple[Processor, ...]
    converts: bool  # whether any result column needs converting (dates, booleans)
    row: Callable[..., Any]  # makes a named tuple of one result row
    take: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # the parameters' values, in order
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)


def _compile(stmt: Any, dialect: Dialect, keys: Sequence[str] | None) -> _Compiled:
    c = stmt.compile(dialect=dialect, column_keys=keys)
    if any(b.expanding for b in c.binds.values()):
        raise ValueError("Prepared statements take no expanding IN parameters")
    # Values fixed in the statement (literals become bound parameters) ...
    defaults: dict[str, Any] = {
        name: b.effective_value for name, b in c.binds.items() if not b.required
    }
    # ... and an INSERT's columns left out, with their scalar defaults.
    for col in getattr(c, "insert_prefetch", ()):
        if col.default is None or not col.default.is_scalar:
            raise ValueError(f"column {col.key} needs a value (no scalar default)")
        defaults[col.key] = col.default.arg
    names = tuple(c.positiontup or ())
    procs = c._bind_processors
    columns = list(
        stmt.selected_columns if isinstance(stmt, Select) else c.effective_returning or ()
    )
    results = tuple(_result_processor(col.type, dialect) for col in columns)
    binds = tuple(procs.get(n) for n in names)
    return _Compiled(
        sql=str(c),
        names=names,
        binds=binds,
        defaults=defaults,
        results=results,
        converts=any(p is not None for p in results),
        row=namedtuple("Row", [col.key for col in columns], rename=True)._make,  # type: ignore[misc,attr-defined]
        take=_taker(names),
        processed=tuple((i, p) for i, p in enumerate(binds) if p is not None),
    )  # fmt: skip


def _made(c: _Compiled, raw: Sequence[Sequence[Any]]) -> list[Any]:
    """Rows as the statement's named tuples, each value through its result processor."""
    results, make = c.results, c.row
    if not c.converts:
        return [make(r) for r in raw]
    return [make(v if p is None else p(v) for v, p in zip(r, results, strict=True)) for r in raw]


# The column rows_each selects each parameter set's position in.
_SLOT = "bizmsg_slot"


# PostgreSQL type oids of float8 and numeric: what a statement's Float and Numeric columns are
# there (SQLAlchemy renders Float as FLOAT, which is float8).
_FLOAT8, _NUMERIC = 701, 1700


def _result_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor:
    """The column's result processor as SQLAlchemy would pick it. asyncpg's for Float and
    Numeric depend on the column's type oid, which SQLAlchemy reads off each result; here
    it is the one the declared type renders as."""
    coltype = None
    if dialect.name == "postgresql" and isinstance(type_, (Float, Numeric)):
        coltype = _FLOAT8 if isinstance(type_, Float) else _NUMERIC
    return type_.dialect_impl(dialect).result_processor(dialect, coltype)  # type: ignore[no-any-return]


def _taker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The values of `names` from a parameter mapping, as a tuple, by one C call
    (operator.itemgetter): a list comprehension over the names cost more than half of a
    statement's parameter handling."""
    if not names:
        return lambda _: ()
    if len(names) == 1:
        only = names[0]
        return lambda params: (params[only],)
    return operator.itemgetter(*names)


class Prepared:
    """One statement, compiled once per dialect (an INSERT once per set of columns given) and
    run on the connection's own driver inside the caller's transaction: SQLite's
    (bizmsg.kit.sqlite_inline) or asyncpg. `postgresql` is the statement for PostgreSQL where
    it differs (dialect-specific ON CONFLICT). Rows come back as named tuples; errors as the
    SQLAlchemy exceptions SQLAlchemy would raise (IntegrityError, ...)."""

    def __init__(self, stmt: Any, *, postgresql: Any = None) -> None:
        self._stmts = {"sqlite": stmt, "postgresql": stmt if postgresql is None else postgresql}
        self._is_insert = getattr(stmt, "is_insert", False)
        self._compiled: dict[tuple[str, tuple[str, ...] | None], _Compiled] = {}
        self._slotted: Prepared | None = None  # with the parameter set's position (rows_each)

    def _prepare(self, dialect: str, params: Mapping[str, Any]) -> tuple[_Compiled, list[Any]]:
        key = (dialect, tuple(params) if self._is_insert else None)
        c = self._compiled.get(key)
        if c is None:
            c = self._compiled[key] = _compile(self._stmts[dialect], _DIALECTS[dialect], key[1])
        try:
            args = list(c.take(params))
        except KeyError:  # a parameter left to what the statement fixes (c.defaults)
            d = c.defaults
            args = [params[n] if n in params else d[n] for n in c.names]
        for i, process in c.processed:
            args[i] = process(args[i])
        return c, args

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Sequence[Any]:
        """The rows the statement returns (SELECT or RETURNING), processed as SQLAlchemy would."""
        dialect = conn.sync_engine.dialect.name
        c, args = self._prepare(dialect, params)
        return _made(c, await _run(conn, dialect, c.sql, args, "rows"))

    async def rows_each(
        self, conn: AsyncConnection, params: Sequence[Mapping[str, Any]]
    ) -> list[Sequence[Any]]:
        """The rows of a SELECT for each parameter set, in order, as `rows` gives them.

        On PostgreSQL in one round trip: the statement runs once per set, pipelined (asyncpg's
        fetchmany: one Bind and Execute per set, one Sync), each with its generic plan, and
        each set's position is selected in a column of its own to tell the rows apart. A round
        trip costs the server about 30 us and asyncpg about 40 us whatever it reads (a trivial
        SELECT, measured), so eight sets cost 27 + 10 us each where eight round trips cost
        65 + 48 us each (a six-probe SELECT). On SQLite each set runs in turn."""
        dialect = conn.sync_engine.dialect.name
        if dialect != "postgresql" or len(params) < 2:
            return [await self.rows(conn, p) for p in params]
        if self._slotted is None:
            stmt = self._stmts[dialect]
            self._slotted = Prepared(stmt.add_columns(bindparam(_SLOT, type_=Integer).label(_SLOT)))
        c, _ = self._prepare(dialect, params[0])
        slotted, values = self._slotted._prepare_rows(
            dialect, [{**p, _SLOT: i} for i, p in enumerate(params)]
        )
        out: list[list[Any]] = [[] for _ in params]
        for record in await _run(conn, dialect, slotted.sql, values, "rows_each"):
            out[record[-1]].append(record[:-1])
        return [_made(c, rows) if rows else rows for rows in out]

    async def first(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Any:
        rows = await self.rows(conn, params)
        return rows[0] if rows else None

    async def execute(self, conn: AsyncConnection, params: Mapping[str, Any]) -> int:
        """Runs a statement that returns no rows; the number of rows it changed."""
        dialect = conn.sync_engine.dialect.name
        c, args = self._prepare(dialect, params)
        return int(await _run(conn, dialect, c.sql, args, "count"))

    def _prepare_rows(
        self, dialect: str, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[_Compiled, list[list[Any]]]:
        """The statement for rows with the same keys (the first's), and each row's values."""
        c, first = self._prepare(dialect, rows[0])
        return c, [first, *(self._prepare(dialect, r)[1] for r in rows[1:])]

    async def execute_many(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per row (all rows with the same keys)."""
        if not rows:
            return
        dialect = conn.sync_engine.dialect.name
        c, values = self._prepare_rows(dialect, rows)
        await _run(conn, dialect, c.sql, values, "many")

    async def write(self, conn: AsyncConnection, row: Mapping[str, Any], *, later: bool) -> None:
        """Runs a write for one row: at once, or with `later` as execute_later does (only for a
        row nothing later in the same transaction reads back)."""
        if later:
            await self.execute_later(conn, [row])
        else:
            await self.execute(conn, row)

    async def execute_later(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per row, now or, inside a group commit that defers (see
        `deferring`), together with the other works' rows just before the commit: one
        execute_many per statement for the whole batch instead of one call per work. Only for
        writes nothing later in the same transaction reads (inserts of new rows)."""
        batch = _deferring.get(id(conn))
        if batch is None:
            await self.execute_many(conn, rows)
        else:
            batch.rows.setdefault(self, []).extend(rows)


@dataclass
class _Deferred:
    """What the works of one group commit leave for just before its commit."""

    # The rows they deferred (execute_later), by statement.
    rows: dict[Prepared, list[Mapping[str, Any]]] = field(default_factory=dict)
    # The counts they add to (Tally), by (tally, key): [count, adds since it was read].
    tallies: dict[tuple[Tally, tuple[Any, ...]], list[int]] = field(default_factory=dict)
    # The amounts they add (Total), by (total, the statement's other parameters): their sum.
    totals: dict[tuple[Total, tuple[tuple[str, Any], ...]], int] = field(default_factory=dict)


# Group commits under way, by id() of their connection (held by the `deferring` block): a
# dict lookup, where the connection's own `info` goes through three SQLAlchemy properties
# (0.44 us, several times a work).
_deferring: dict[int, _Deferred] = {}


@contextmanager
def deferring(conn: AsyncConnection) -> Iterator[None]:
    """Within the block, execute_later on `conn` keeps its rows for `flush_deferred`, and
    Tally.add counts in memory; whatever was not flushed when the block ends is dropped (the
    transaction is being rolled back)."""
    _deferring[id(conn)] = _Deferred()
    try:
        yield
    finally:
        _deferring.pop(id(conn), None)


def defers(conn: AsyncConnection) -> bool:
    """Whether `conn` is in a group commit that defers (see `deferring`)."""
    return id(conn) in _deferring


async def flush_deferred(conn: AsyncConnection) -> None:
    """Runs the rows deferred so far: each statement once for all its rows, in the order the
    statements were first deferred; rows of one statement with different keys go apart. Then
    writes each tally's count that was added to in memory (Tally), then each total's sum
    (Total), raising TotalRefused when a guard refuses one. On PostgreSQL the rows and counts
    go in together, in as few statements as they allow (bizmsg.kit.bulk)."""
    batch = _deferring.get(id(conn))
    if batch is None:
        return
    deferred, batch.rows = batch.rows, {}
    tallies, batch.tallies = batch.tallies, {}
    writes: list[tuple[Prepared, list[Mapping[str, Any]], bool]] = []
    for prepared, rows in deferred.items():
        groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        writes.extend((prepared, same_keys, False) for same_keys in groups.values())
    by_tally: dict[Tally, list[Mapping[str, Any]]] = {}
    for (tally, key), (count, added) in tallies.items():
        if added:
            row = dict(zip(tally.key_names, key, strict=True))
            row[tally.count_name] = count
            by_tally.setdefault(tally, []).append(row)
    # A tally's rows are one per key: each changes a row of its own.
    writes.extend((tally.put, put_rows, True) for tally, put_rows in by_tally.items())
    if conn.sync_engine.dialect.name == "postgresql":
        await _write_together(conn, writes)
    else:
        for prepared, rows, _ in writes:
            await prepared.execute_many(conn, rows)
    totals, batch.totals = batch.totals, {}
    # By statement in the order first used, then by key: every batch takes the rows' locks in
    # the same order, so two batches never wait on each other in a cycle.
    order: dict[Total, int] = {}
    for total, _ in totals:
        order.setdefault(total, len(order))
    for (total, key), amount in sorted(totals.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        if await total.stmt.execute(conn, {**dict(key), total.amount_name: amount}) != 1:
            raise TotalRefused(dict(key), amount)


async def _write_together(
    conn: AsyncConnection, writes: Sequence[tuple[Prepared, list[Mapping[str, Any]], bool]]
) -> None:
    """PostgreSQL: the writes in as few statements as bizmsg.kit.bulk can make of them; the
    rest row by row."""
    parts = []
    for prepared, rows, distinct in writes:
        c, values = prepared._prepare_rows("postgresql", rows)
        stmt = prepared._stmts["postgresql"]
        parts.append(bulk.Part(stmt, c.sql, c.names, values, (prepared, c.names), distinct))
    statements, alone = bulk.plan(parts)
    for statement, its_parts in statements:
        await _run(conn, "postgresql", statement.sql, statement.args(its_parts), "count")
    for part in alone:
        await _run(conn, "postgresql", part.sql, part.rows, "many")


class Tally:
    """A count that many works of one group commit add one to: a sender's last sequence
    number, a business's messages this second. Each add is normally an upsert that returns
    the new count; inside a group commit that defers (see `deferring`) only the first add of a
    key in the transaction runs it (which also locks the row on PostgreSQL; SQLite's writer
    holds the whole file), the later ones count in memory, and `flush_deferred` writes the
    final count once, with `put` (an UPDATE taking the key columns and `count_name`). Every
    add returns the exact count: nothing else can change the row before the commit. So only
    for rows that no other statement of the same transaction reads or writes; the count is
    gone with the transaction if it is rolled back (the batch then runs again without it)."""

    def __init__(self, put: Prepared, key_names: tuple[str, ...], count_name: str) -> None:
        self.put = put
        self.key_names = key_names
        self.count_name = count_name

    def add(self, conn: AsyncConnection, key: tuple[Any, ...]) -> int | None:
        """One more on `key`'s count held in this transaction: the new count, or None when
        none is held (run the upsert, then `hold` what it returned)."""
        batch = _deferring.get(id(conn))
        held = None if batch is None else batch.tallies.get((self, key))
        if held is None:
            return None
        held[0] += 1
        held[1] += 1
        return held[0]

    def held(self, conn: AsyncConnection, key: tuple[Any, ...]) -> int | None:
        """`key`'s count as held in this group commit (None when none is held): newer than the
        row, for a caller that reads the row with a statement of its own."""
        batch = _deferring.get(id(conn))
        held = None if batch is None else batch.tallies.get((self, key))
        return None if held is None else held[0]

    def hold(self, conn: AsyncConnection, key: tuple[Any, ...], count: int) -> None:
        """`key`'s count as the upsert just returned it, held for later adds in this group
        commit (nothing is held outside one)."""
        batch = _deferring.get(id(conn))
        if batch is not None:
            batch.tallies[self, key] = [count, 0]


class TotalRefused(RuntimeError):
    """A Total's statement changed no row for a group commit's sum (its guard refused the
    total): the batch is rolled back and runs again work by work, each applying its own
    amount, so the work that does not fit gets its own error."""

    def __init__(self, key: Mapping[str, Any], amount: int) -> None:
        super().__init__(f"guarded update refused the batch's total {amount} for {dict(key)}")


class Total:
    """An amount that many works of one group commit add to the same row: a wallet's
    reservations, the revenue account's pending credits. `stmt` is one guarded relative UPDATE
    (`col = col + :amount WHERE key AND guard`) that changes exactly one row when the amount
    fits. Inside a group commit that defers (see `deferring`), `add` sums the amounts of the
    same other parameters in memory and `flush_deferred` runs the statement once per key with
    the sum, just before the commit; if the guard refuses the sum, the batch goes round again
    without deferring (TotalRefused), where each work runs the statement with its own amount.
    The guard judges the row as the commit leaves it, so only for guards that a sum passes
    whenever each of its parts passes in turn (upper bounds on what the amounts add up to)
    and for rows nothing else in the transaction reads for a decision."""

    def __init__(self, stmt: Prepared, amount_name: str) -> None:
        self.stmt = stmt
        self.amount_name = amount_name

    def add(self, conn: AsyncConnection, params: Mapping[str, Any]) -> bool:
        """Whether `params`' amount was added to this group commit's sum (False outside one:
        run the statement now)."""
        batch = _deferring.get(id(conn))
        if batch is None:
            return False
        amount = params[self.amount_name]
        key = (self, tuple((k, v) for k, v in params.items() if k != self.amount_name))
        batch.totals[key] = batch.totals.get(key, 0) + amount
        return True


# PostgreSQL: callbacks given every statement sent here (tests and the bench count statements;
# SQLAlchemy's events do not see these). Keyed by the engine's pool; None: every engine.
_pg_tracers: list[tuple[Any, Callable[[str], None]]] = []


@contextmanager
def traced(pool: Any, callback: Callable[[str], None]) -> Iterator[None]:
    """Calls `callback` with each PostgreSQL statement sent on a connection of `pool` (an
    engine's `sync_engine.pool`; None for every engine) until the block ends. On SQLite,
    bizmsg.kit.sqlite_inline.traced sees these statements already."""
    entry = (pool, callback)
    _pg_tracers.append(entry)
    try:
        yield
    finally:
        _pg_tracers.remove(entry)


def _held(conn: AsyncConnection) -> Any:
    """The pooled DBAPI connection `conn` holds now, or None (read with no coroutine)."""
    sync = conn.sync_connection
    return None if sync is None else sync._dbapi_connection


async def raw_connection(conn: AsyncConnection) -> Any:
    """The pooled DBAPI connection under `conn`. get_raw_connection() costs a greenlet switch
    (tens of microseconds, more than a primary-key statement on SQLite); a connection already
    checked out holds it, so that is only needed when it has to be fetched again."""
    raw = _held(conn)
    return raw if raw is not None else await conn.get_raw_connection()


async def _run(conn: AsyncConnection, dialect: str, sql: str, args: list[Any], kind: str) -> Any:
    raw = _held(conn)  # not raw_connection(): no coroutine per statement when it is held
    if raw is None:
        raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if dialect == "sqlite":
        try:
            # At once, with no coroutine per statement (each costs about what a primary-key
            # read does); only a statement refused for another process's lock goes round again.
            try:
                return driver.run_now(kind, sql, args)
            except sqlite3.OperationalError as e:
                if not sqlite_inline.busy(e):
                    raise
            return await driver.run(kind, sql, args)
        except sqlite3.Error as e:
            raise DBAPIError.instance(sql, args, e, sqlite3.Error) from e
    for pool, callback in _pg_tracers:
        if pool is None or pool is conn.sync_engine.pool:
            callback(sql)
    # SQLAlchemy's asyncpg adapter: its lock (one statement at a time per connection), and the
    # transaction SQLAlchemy began, which the adapter only opens with its first statement.
    adapted: Any = raw.dbapi_connection
    async with adapted._execute_mutex:
        try:
            if conn.in_transaction() and adapted._transaction is None:
                await adapted._start_transaction()
            if kind == "rows":
                return await driver.fetch(sql, *args)
            if kind == "rows_each":
                return await driver.fetchmany(sql, args)
            if kind == "count":
                status: str = await driver.execute(sql, *args)  # "UPDATE 1", "INSERT 0 1"
                return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
            return await driver.executemany(sql, args)
        except Exception as e:
            try:
                adapted._handle_exception(e)  # raises the adapter's DBAPI error for it
            except Exception as dbapi_error:
                raise DBAPIError.instance(sql, args, dbapi_error, adapted.dbapi.Error) from e
            raise
        except BaseException as e:
            # Cancelled mid-statement (the caller went away): what the connection is doing now
            # is unknown, so it must not go back to the pool. SQLAlchemy does the same for its
            # own statements; without it a later transaction can wait on this one's locks.
            conn.sync_connection.invalidate(e)  # type: ignore[union-attr,arg-type]
            raise
