"""Fixtures shared by every test: databases on SQLite and PostgreSQL, and a movable clock.

PostgreSQL tests run when a server answers at BIZMSG_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test); with BIZMSG_REQUIRE_POSTGRES=1 (CI) an
unreachable server fails them instead of skipping. Each test gets fresh databases,
dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from bizmsg.kit.clock import ManualClock
from bizmsg.kit.storage import postgres_execute, postgres_url

PG_ADMIN_URL = os.environ.get(
    "BIZMSG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("BIZMSG_REQUIRE_POSTGRES") == "1"
_pg_ok: bool | None = None


async def _admin(sql: str) -> None:
    await postgres_execute(PG_ADMIN_URL, sql, connect_timeout=5)


def postgres_available() -> bool:
    global _pg_ok
    if _pg_ok is None:
        try:
            asyncio.run(_admin("SELECT 1"))
            _pg_ok = True
        except (OSError, asyncpg.PostgresError, TimeoutError):
            _pg_ok = False
    return _pg_ok


def _require_postgres() -> None:
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable at {PG_ADMIN_URL}")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}")


def _async_url(dbname: str) -> str:
    return postgres_url(PG_ADMIN_URL, database=dbname)


DatabaseUrlFactory = Callable[[str], str]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        _require_postgres()
    return str(request.param)


@contextmanager
def databases(backend: str, directory: Path) -> Iterator[DatabaseUrlFactory]:
    """Makes one fresh database per call (named by `name`): a file in `directory` on SQLite,
    a new database on PostgreSQL; the PostgreSQL ones are dropped when the block ends."""
    created: list[str] = []

    def make(name: str = "db") -> str:
        if backend == "sqlite":
            return f"sqlite+aiosqlite:///{directory / (name + '.db')}"
        dbname = f"bizmsg_t_{name}_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(f'CREATE DATABASE "{dbname}"'))
        created.append(dbname)
        return _async_url(dbname)

    try:
        yield make
    finally:
        for dbname in created:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


@pytest.fixture
def database_url_factory(backend: str, tmp_path: Path) -> Iterator[DatabaseUrlFactory]:
    """Makes one fresh database per call (named by `name`) on the test's backend."""
    with databases(backend, tmp_path) as make:
        yield make


@pytest.fixture
def database_url(database_url_factory: DatabaseUrlFactory) -> str:
    return database_url_factory("db")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
