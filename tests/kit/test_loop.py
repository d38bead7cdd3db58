"""kit/loop.py: how long a writer waits for others to share its write (gather_arrivals)."""

from __future__ import annotations

import asyncio

from bizmsg.kit.loop import gather_arrivals


def waited(every: int, until: int, quiet: int, most: int) -> tuple[int, int]:
    """Runs gather_arrivals beside a producer that puts an entry in the queue every `every`
    turns of the loop, up to turn `until`: (the turns the producer saw before gather_arrivals
    returned, the entries then in the queue)."""

    async def scenario() -> tuple[int, int]:
        arrivals: asyncio.Queue[int] = asyncio.Queue()
        turns = 0

        async def producer() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1
                if every and turns <= until and turns % every == 0:
                    arrivals.put_nowait(turns)

        task = asyncio.create_task(producer())
        await asyncio.sleep(0)  # the producer is under way
        start = turns
        await gather_arrivals(arrivals.qsize, quiet, most)
        seen = turns - start
        task.cancel()
        return seen, arrivals.qsize()

    return asyncio.run(scenario())


def test_with_nothing_arriving_it_waits_the_quiet_turns_only() -> None:
    seen, size = waited(every=0, until=0, quiet=8, most=64)
    assert size == 0
    assert 7 <= seen <= 9


def test_it_waits_while_entries_keep_arriving_then_the_quiet_turns() -> None:
    # An entry every 5 turns up to turn 30: a fixed 8 turns would have stopped after the first.
    seen, size = waited(every=5, until=30, quiet=8, most=64)
    assert size == 6
    assert 30 + 7 <= seen <= 30 + 10


def test_it_stops_after_the_most_turns_however_busy() -> None:
    seen, size = waited(every=2, until=1000, quiet=8, most=40)
    assert 39 <= seen <= 41
    assert 19 <= size <= 21
