"""Single reads by key that arrive together share one round trip.

On PostgreSQL every read is a round trip: asyncpg's client work and the server's
bind-execute cost about the same whether it reads one row or twenty. Calls that arrive
in the same turn of the event loop (one write of an internal stream carries several) ask at
the same moment, so `KeyedReads` hands their keys to one fetch (one statement over all of them,
or the statement once per key in one round trip: Prepared.rows_each) and gives each caller its
own row. Calls that arrive one by one (each its own incoming RPC) can be gathered over a few
turns of the loop instead (`gather`). A batch starts after the turn in which its first key
arrived, so its reads see everything committed before any of its callers arrived, as a read
of their own would. On SQLite a read runs inline without suspending, so there callers read on
their own (their choice, not this module's).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

from bizmsg.kit.loop import gather_arrivals

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedReads(Generic[K, V]):
    """`fetch` reads the rows of several distinct keys in one round trip: key -> value for
    those that exist. `get(key)` is one caller's read: its value, or None when there is none."""

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        *,
        gather: tuple[int, int] | None = None,
    ) -> None:
        self._fetch = fetch
        # (quiet, most): turns of the loop a batch waits while more keys keep coming
        # (bizmsg.kit.loop.gather_arrivals); None: the batch is the keys of one turn.
        self._gather = gather
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._running: set[asyncio.Future[None]] = set()  # held, so none is collected midway
        self._collecting = False  # a batch is gathering its keys

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.append((key, future))
        if not self._collecting:
            # After this turn's ready callbacks (the other calls of the same write), in a
            # context of its own: the batch is nobody's call in particular.
            self._collecting = True
            loop.call_soon(self._start, context=contextvars.Context())
        return await future

    def _start(self) -> None:
        task = asyncio.ensure_future(self._collect())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _count(self) -> int:
        return len(self._waiting)

    async def _collect(self) -> None:
        try:
            if self._gather is not None:
                await gather_arrivals(self._count, *self._gather)
        except BaseException:  # cancelled (the service is stopping): so are its callers
            batch = self._take()
            for _, future in batch:
                future.cancel()
            raise
        await self._run(self._take())

    def _take(self) -> list[tuple[K, asyncio.Future[V | None]]]:
        batch, self._waiting = self._waiting, []
        self._collecting = False
        return batch

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
