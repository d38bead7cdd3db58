"""What the kit knows about the RPC running in this task: its request id and deadline.

The server interceptor sets these; outgoing calls read them to propagate the request id
and to shrink their own deadline to what the incoming call has left.
"""

from __future__ import annotations

import contextvars
import time

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("bizmsg_request_id", default="")
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "bizmsg_deadline", default=None
)


def current_request_id() -> str:
    return _request_id.get()


def time_remaining() -> float | None:
    """Seconds the incoming call has left, or None when it has no deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def enter(request_id: str, remaining: float | None) -> None:
    _request_id.set(request_id)
    _deadline.set(None if remaining is None else time.monotonic() + remaining)
