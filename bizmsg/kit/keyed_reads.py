"""Single reads by key that arrive together share one statement.

On PostgreSQL every read is a round trip: asyncpg's client work and the server's
parse-bind-execute cost about the same whether it reads one row or twenty. Calls that arrive
in the same turn of the event loop (one write of an internal stream carries several) ask at
the same moment, so `KeyedReads` sends their keys in one statement and gives each caller its
own row. A batch starts after the turn in which its first key arrived, so its statement sees
everything committed before any of its callers arrived, as a read of their own would. On
SQLite a read runs inline without suspending, so there callers read on their own (their choice,
not this module's).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedReads(Generic[K, V]):
    """`fetch` reads the rows of several distinct keys in one statement: key -> value for those
    that exist. `get(key)` is one caller's read: its value, or None when there is none."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> None:
        self._fetch = fetch
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._running: set[asyncio.Future[None]] = set()  # held, so none is collected midway

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.append((key, future))
        if len(self._waiting) == 1:
            # After this turn's ready callbacks (the other calls of the same write), in a
            # context of its own: the batch is nobody's call in particular.
            loop.call_soon(self._start, context=contextvars.Context())
        return await future

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V | None]]]) -> None:
        live = [(key, future) for key, future in batch if not future.done()]  # not cancelled
        if not live:
            return
        try:
            found = await self._fetch(list(dict.fromkeys(key for key, _ in live)))
        except BaseException as e:
            # Each caller gets the error its own read would have met; cancelled (the service
            # is stopping), they are cancelled with it.
            for _, future in live:
                if not future.done():
                    if isinstance(e, Exception):
                        future.set_exception(e)
                    else:
                        future.cancel()
            if not isinstance(e, Exception):
                raise
            return
        for key, future in live:
            if not future.done():
                future.set_result(found.get(key))
