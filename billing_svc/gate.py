"""One writer at a time per process on SQLite.

SQLite lets one transaction write at a time; BEGIN IMMEDIATE waiters poll the lock with
growing sleeps, which turns contention into long tail latencies. Queueing writers on an
asyncio lock first hands the database lock over without polling. PostgreSQL locks rows,
so there the gate is open and writers run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bizmsg.kit.storage import Database


class WriteGate:
    def __init__(self, db: Database) -> None:
        self._lock = asyncio.Lock() if db.dialect == "sqlite" else None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        if self._lock is None:
            yield
            return
        async with self._lock:
            yield
