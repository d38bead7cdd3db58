"""Which event loop a service process runs on (kept light: the bench's null servers import it)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from bizmsg.kit.config import Settings

T = TypeVar("T")

# Container allocations (net of frees) between two young collections of the cyclic garbage
# collector; Python's default is 700. A young collection looks at every young object still
# alive, and under load those are the calls in flight whatever the threshold, so a higher one
# does the same work per collection far less often. py-spy put the collector at about 2 % of
# delivery's event loop with the default.
GC_YOUNG_THRESHOLD = 10_000


async def gather_arrivals(waiting: Callable[[], int], quiet: int, most: int) -> None:
    """Yields turns of the loop before a write that others could share (a group commit, a
    stream write), for as long as more keep coming: until `quiet` turns in a row left
    `waiting()` (how many wait for the write; only the writer takes them) where it was, or
    after `most` turns. Under load each turn runs what is ready (new calls, answers from other
    services), and the writes it leads to join this one; they come in bursts with a few quiet
    turns between them, and a fixed number of turns wrote in the middle of one. Idle, it costs
    `quiet` turns of a few microseconds. Each caller's numbers are its own, measured."""
    size = waiting()
    still = 0
    for _ in range(most):
        await asyncio.sleep(0)
        if (now := waiting()) != size:
            size, still = now, 0
        else:
            still += 1
            if still >= quiet:
                return


@types.coroutine
def run_in_context(
    ctx: contextvars.Context, coro: Coroutine[Any, Any, T]
) -> Generator[Any, Any, T]:
    """Awaits `coro` with each of its steps run in `ctx` (as a task made with that context
    would), but inside the awaiting task: no task to make and schedule, and a coroutine that
    does not suspend (SQLite's statements never do) runs to its end at once. What it waits on
    is passed up to the awaiting task, and cancellation comes down into it, as in a task."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            waiting = ctx.run(coro.send, sent) if thrown is None else ctx.run(coro.throw, thrown)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            sent, thrown = (yield waiting), None
        except BaseException as e:  # handed to the coroutine, as a task would
            sent, thrown = None, e


def tune_gc() -> None:
    """For a serving process, once its modules are imported: what exists now (modules,
    classes, compiled statements) is moved out of the collector's sight for good (gc.freeze),
    so that full collections skip it, and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (libuv's event loop, in C) where it is installed: every call wakes the loop several
    times (network, tasks, futures, the multiplexed streams), and uvloop spends less CPU on each;
    measured with `bizmsg bench`, about a tenth of delivery's CPU per message. asyncio's own
    loop otherwise (BIZMSG_UVLOOP=0 forces it)."""
    if not settings.uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
