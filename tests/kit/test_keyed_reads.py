"""KeyedReads: reads by key that arrive in the same turn of the loop share one fetch; each
caller gets its own row (None when there is none), its own error, or nothing if it left."""

from __future__ import annotations

import asyncio

import pytest

from bizmsg.kit.keyed_reads import KeyedReads

ROWS = {"a": 1, "b": 2, "c": 3}


class Store:
    def __init__(self) -> None:
        self.fetches: list[list[str]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started: asyncio.Queue[None] = asyncio.Queue()  # one item per fetch begun

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.fetches.append(keys)
        self.started.put_nowait(None)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: ROWS[k] for k in keys if k in ROWS}


def test_reads_of_one_turn_share_one_fetch_of_distinct_keys() -> None:
    async def go() -> tuple[list[int | None], list[list[str]]]:
        store = Store()
        reads = KeyedReads(store.fetch)
        got = await asyncio.gather(*(reads.get(k) for k in ["a", "b", "a", "zz", "c"]))
        return got, store.fetches

    got, fetches = asyncio.run(go())
    assert got == [1, 2, 1, None, 3]
    assert fetches == [["a", "b", "zz", "c"]]


def test_reads_arriving_while_a_fetch_runs_make_the_next_batch() -> None:
    async def go() -> tuple[list[int | None], list[list[str]]]:
        store = Store()
        store.gate = asyncio.Event()
        reads = KeyedReads(store.fetch)
        first = [asyncio.ensure_future(reads.get(k)) for k in ["a", "b"]]
        await store.started.get()
        later = [asyncio.ensure_future(reads.get(k)) for k in ["c", "a"]]
        await store.started.get()
        store.gate.set()
        return list(await asyncio.gather(*first, *later)), store.fetches

    got, fetches = asyncio.run(go())
    assert got == [1, 2, 3, 1]
    assert fetches == [["a", "b"], ["c", "a"]]


def test_with_gather_a_batch_waits_while_keys_keep_coming() -> None:
    """gather=(quiet, most): keys that arrive over several turns, each within `quiet` turns of
    the one before, share one fetch; one that comes after `quiet` turns without any makes the
    next batch."""

    async def go() -> tuple[list[int | None], list[list[str]]]:
        store = Store()
        reads = KeyedReads(store.fetch, gather=(3, 50))
        got = [asyncio.ensure_future(reads.get("a"))]
        for key in ("b", "c"):
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # two quiet turns: fewer than three
            got.append(asyncio.ensure_future(reads.get(key)))
        await store.started.get()
        for _ in range(5):
            await asyncio.sleep(0)
        got.append(asyncio.ensure_future(reads.get("a")))
        return list(await asyncio.gather(*got)), store.fetches

    got, fetches = asyncio.run(go())
    assert got == [1, 2, 3, 1]
    assert fetches == [["a", "b", "c"], ["a"]]


def test_with_gather_a_batch_stops_waiting_after_most_turns() -> None:
    async def go() -> list[list[str]]:
        store = Store()
        reads = KeyedReads(store.fetch, gather=(3, 4))
        got = []
        for i in range(12):  # a key every turn: never quiet
            got.append(asyncio.ensure_future(reads.get(f"k{i}")))
            await asyncio.sleep(0)
        assert await asyncio.gather(*got) == [None] * 12
        return store.fetches

    fetches = asyncio.run(go())
    assert len(fetches) >= 2  # each batch went after at most four turns of waiting
    assert sorted(k for keys in fetches for k in keys) == sorted(f"k{i}" for i in range(12))


def test_a_failed_fetch_fails_each_caller_and_a_caller_that_left_is_skipped() -> None:
    async def go() -> tuple[list[object], list[list[str]], bool]:
        store = Store()
        store.fail = ConnectionError("database gone")
        reads = KeyedReads(store.fetch)
        gone = asyncio.ensure_future(reads.get("gone"))
        stay = [asyncio.ensure_future(reads.get(k)) for k in ["a", "b"]]
        await asyncio.sleep(0)  # the reads are queued; the batch starts next turn
        gone.cancel()
        got = await asyncio.gather(*stay, return_exceptions=True)
        return list(got), store.fetches, gone.cancelled()

    got, fetches, cancelled = asyncio.run(go())
    assert all(isinstance(e, ConnectionError) for e in got)
    assert fetches == [["a", "b"]]  # the caller that left is not read for
    assert cancelled


def test_a_cancelled_fetch_cancels_its_callers() -> None:
    async def go() -> None:
        store = Store()
        store.gate = asyncio.Event()
        reads = KeyedReads(store.fetch)
        waiting = asyncio.ensure_future(reads.get("a"))
        await store.started.get()
        for task in list(reads._running):
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(go())


def test_a_batch_cancelled_while_gathering_cancels_its_callers() -> None:
    async def go() -> list[list[str]]:
        store = Store()
        reads = KeyedReads(store.fetch, gather=(50, 100))
        waiting = [asyncio.ensure_future(reads.get(k)) for k in ("a", "b")]
        for _ in range(3):
            await asyncio.sleep(0)  # the batch is gathering
        for task in list(reads._running):
            task.cancel()
        for w in waiting:
            with pytest.raises(asyncio.CancelledError):
                await w
        # The next read starts a batch of its own.
        assert await reads.get("c") == 3
        return store.fetches

    assert asyncio.run(go()) == [["c"]]
