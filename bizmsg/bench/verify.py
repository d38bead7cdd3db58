"""Correctness next to speed: h2load sees HTTP 200 for a failed gRPC call, so the bench counts
outcomes where they are decided. Every bizmsg service logs one JSON line per call with its
gRPC code (kit interceptor); the bench reads the lines written during a run."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path


class LogWatch:
    def __init__(self, logs: Mapping[str, Path]) -> None:
        self.logs = dict(logs)

    def mark(self) -> dict[str, int]:
        return {
            name: path.stat().st_size if path.exists() else 0 for name, path in self.logs.items()
        }

    def codes(self, since: Mapping[str, int], service: str, method: str) -> Counter[str]:
        """gRPC codes of `method` calls logged by `service` after the mark."""
        counts: Counter[str] = Counter()
        path = self.logs[service]
        with path.open("rb") as f:
            f.seek(since.get(service, 0))
            for raw in f:
                if b'"rpc"' not in raw:
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if entry.get("message") == "rpc" and entry.get("method") == method:
                    counts[str(entry.get("code"))] += 1
        return counts

    def errors(self, since: Mapping[str, int]) -> list[str]:
        """ERROR lines (unexpected exceptions) logged by any service after the mark."""
        found: list[str] = []
        for service, path in self.logs.items():
            with path.open("rb") as f:
                f.seek(since.get(service, 0))
                for raw in f:
                    if b'"level": "ERROR"' in raw:
                        found.append(f"{service}: {raw.decode(errors='replace')[:300]}")
        return found


def count_rows(database_url: str, table: str) -> int:
    """Rows in one of a service's tables, read directly: SendMessage's ground truth is the number
    of messages stored, since a call h2load abandons at the end of a run is cancelled part-way."""
    from sqlalchemy import text

    from bizmsg.kit.storage import Database

    async def count() -> int:
        db = Database(database_url, pool_size=1)
        try:
            async with db.read() as session:
                return int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
        finally:
            await db.dispose()

    return asyncio.run(count())
