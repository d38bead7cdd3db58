"""Hot-path statements: a Core statement compiled once per dialect and run on SQLite's driver.

SQLAlchemy's asyncio execution path costs tens of microseconds per statement before the
database sees it (execution context, events, result objects, a greenlet switch per await),
more than SQLite takes to run a primary-key statement. The few statements every message
runs skip that: `Prepared` keeps the SQL text and the bind and result processors SQLAlchemy
compiled (so values go in and come out exactly as through SQLAlchemy: aware
UTC datetimes, booleans), and sends them on the connection's own driver inside the caller's
transaction. Everything else goes through SQLAlchemy as usual.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

_SQLITE: Dialect = aiosqlite.dialect()
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind parameter names in positional order
    binds: tuple[Processor, ...]
    defaults: dict[str, Any]  # what a parameter is when the caller does not give it
    results: tuple[Processor, ...]
    row: Callable[..., Any]  # makes a named tuple of one result row


def _compile(stmt: Any, keys: Sequence[str] | None) -> _Compiled:
    c = stmt.compile(dialect=_SQLITE, column_keys=keys)
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
    return _Compiled(
        sql=str(c),
        names=names,
        binds=tuple(procs.get(n) for n in names),
        defaults=defaults,
        results=tuple(col.type.dialect_impl(_SQLITE).result_processor(_SQLITE, None)
                      for col in columns),
        row=namedtuple("Row", [col.key for col in columns], rename=True)._make,  # type: ignore[misc,attr-defined]
    )  # fmt: skip


class Prepared:
    """One statement, compiled for SQLite once (an INSERT once per set of columns given). On
    SQLite it runs on the driver (bizmsg.kit.sqlite_inline); on PostgreSQL through SQLAlchemy
    as usual, where the network round trip, not the library, is the cost (and SQLAlchemy's
    asyncpg adapter opens the transaction lazily, on its own first statement). `postgresql`
    is the statement for PostgreSQL where it differs (dialect-specific ON CONFLICT).

    Rows come back as named tuples (SQLite) or SQLAlchemy rows (PostgreSQL): both give
    columns by name and by position."""

    def __init__(self, stmt: Any, *, postgresql: Any = None) -> None:
        self.stmt = stmt
        self.pg_stmt = stmt if postgresql is None else postgresql
        self._is_insert = getattr(stmt, "is_insert", False)
        self._compiled: dict[tuple[str, ...] | None, _Compiled] = {}
        if not self._is_insert:
            self._compiled[None] = _compile(stmt, None)

    def _sqlite(self, params: Mapping[str, Any]) -> tuple[_Compiled, list[Any]]:
        key = tuple(params) if self._is_insert else None
        c = self._compiled.get(key)
        if c is None:
            c = self._compiled[key] = _compile(self.stmt, key)
        d = c.defaults
        args = [
            (params[n] if n in params else d[n])
            if p is None
            else p(params[n] if n in params else d[n])
            for n, p in zip(c.names, c.binds, strict=True)
        ]
        return c, args

    @staticmethod
    async def _driver(conn: AsyncConnection) -> Any:
        return (await conn.get_raw_connection()).driver_connection

    @staticmethod
    def _wrapped(e: sqlite3.Error, c: _Compiled, args: Any) -> Exception:
        """The SQLAlchemy exception SQLAlchemy would have raised (IntegrityError, ...), so
        callers catch the same types on both paths."""
        return DBAPIError.instance(c.sql, args, e, sqlite3.Error)

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Sequence[Any]:
        """The rows the statement returns (SELECT or RETURNING), processed as SQLAlchemy would."""
        if conn.dialect.name != "sqlite":
            return (await conn.execute(self.pg_stmt, dict(params))).all()
        c, args = self._sqlite(params)
        try:
            raw = await (await self._driver(conn)).execute_fetchall(c.sql, args)
        except sqlite3.Error as e:
            raise self._wrapped(e, c, args) from e
        results, make = c.results, c.row
        return [
            make(v if p is None else p(v) for v, p in zip(r, results, strict=True)) for r in raw
        ]

    async def first(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Any:
        rows = await self.rows(conn, params)
        return rows[0] if rows else None

    async def execute(self, conn: AsyncConnection, params: Mapping[str, Any]) -> int:
        """Runs a statement that returns no rows; the number of rows it changed."""
        if conn.dialect.name != "sqlite":
            return int((await conn.execute(self.pg_stmt, dict(params))).rowcount)
        c, args = self._sqlite(params)
        try:
            return int(await (await self._driver(conn)).execute_count(c.sql, args))
        except sqlite3.Error as e:
            raise self._wrapped(e, c, args) from e

    async def execute_many(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per row (all rows with the same keys)."""
        if not rows:
            return
        if conn.dialect.name != "sqlite":
            await conn.execute(self.pg_stmt, [dict(r) for r in rows])
            return
        c, _ = self._sqlite(rows[0])
        args = [self._sqlite(r)[1] for r in rows]
        try:
            await (await self._driver(conn)).execute_many(c.sql, args)
        except sqlite3.Error as e:
            raise self._wrapped(e, c, args) from e
