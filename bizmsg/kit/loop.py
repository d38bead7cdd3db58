"""Which event loop a service process runs on (kept light: the bench's null servers import it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bizmsg.kit.config import Settings


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
