"""Which event loop a service process runs on (kept light: the bench's null servers import it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bizmsg.kit.config import Settings


async def let_ready_work_run(turns: int) -> None:
    """Yields `turns` turns of the loop before a write that others could share (a group
    commit, a stream write): under load each turn runs what is ready (new calls, answers from
    other services), and the writes it leads to join this one; idle, a turn costs microseconds.
    Each caller's number of turns is its own, measured."""
    for _ in range(turns):
        await asyncio.sleep(0)


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
