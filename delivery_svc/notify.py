"""Wakes this process's open streams when their mailbox or status feed changes, and the
outbox relay when a commit queued work for it.

Only a hint: streams poll the database and the relay sweeps it, so writes made by other
replicas reach them too, a little later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class Notifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def notify(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def subscribe(self, key: str) -> asyncio.Event:
        """A standing watch for the life of the process (the outbox relay's wake-up)."""
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        return event

    @contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]


# Notified after a commit that added outbox rows: the relay sends them without waiting.
OUTBOX = "outbox"


def mailbox_key(recipient: str, device_id: str) -> str:
    return f"mailbox:{recipient}/{device_id}"


def status_key(sender: str) -> str:
    return f"status:{sender}"
