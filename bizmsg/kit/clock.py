"""Time that tests can move.

Services never call datetime.now() directly: windows, TTLs, expiry and pacing all read
a Clock. In-process tests use ManualClock; tests that run services as real processes use
OffsetFileClock, whose offset they move by rewriting one small file.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that stands still until a test moves it. Thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: float | timedelta) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)


class OffsetFileClock:
    """System time plus an offset in seconds read from a file (re-read when it changes)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._mtime_ns = -1
        self._offset = 0.0

    def _refresh(self) -> None:
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            self._offset = 0.0
            return
        if mtime != self._mtime_ns:
            text = self._path.read_text().strip()
            self._offset = float(text) if text else 0.0
            self._mtime_ns = mtime

    def now(self) -> datetime:
        self._refresh()
        return datetime.now(UTC) + timedelta(seconds=self._offset)

    @staticmethod
    def move(path: str | Path, offset_seconds: float) -> None:
        """Set the offset every process reading `path` will see (atomic replace)."""
        p = Path(path)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(repr(float(offset_seconds)))
        os.replace(tmp, p)
