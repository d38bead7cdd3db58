"""Server-made ids: UUIDv7 (RFC 9562), time-ordered so that indexes on them stay append-mostly.

Made here rather than by uuid6.uuid7, for two reasons measured under `bizmsg bench`:
- cost: every call there asks the kernel for random bits (secrets) and builds a UUID object;
  delivery makes two ids per message (the call's request id, the message id), and py-spy put
  them at 3 % of its loop. Here the random bits come from a buffer filled by os.urandom a few
  hundred ids at a time, and the text is formatted from one integer.
- time: uuid6 keeps ids in order by moving the timestamp one millisecond ahead whenever a
  second id falls in the same millisecond, so above 1,000 ids a second their timestamps run
  ahead of the clock. Here ids of one millisecond are ordered by a counter in the 12 bits of
  rand_a (RFC 9562 section 6.2, method 1), started at a random value each millisecond; the
  timestamp moves ahead only when 4,096 ids fall in one millisecond.
"""

from __future__ import annotations

import os
import threading
import time

_POOL_IDS = 512
_RAND_B = (1 << 62) - 1
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62


class _Ids:
    def __init__(self) -> None:
        self.last_ms = -1
        self.counter = 0
        self.pool = b""
        self.at = 0
        self.lock = threading.Lock()  # ids are made on worker threads too

    def _random64(self) -> int:
        at = self.at
        if at >= len(self.pool):
            self.pool, at = os.urandom(8 * _POOL_IDS), 0
        self.at = at + 8
        return int.from_bytes(self.pool[at : at + 8])

    def next(self) -> int:
        with self.lock:
            return self._next()

    def _next(self) -> int:
        ms = time.time_ns() // 1_000_000
        if ms > self.last_ms:
            self.last_ms = ms
            # A random start, at most 2,047: room for at least 2,048 more ids this millisecond.
            self.counter = self._random64() & 0x7FF
        else:
            # Same millisecond (or the clock stepped back): the next id of the last one.
            self.counter += 1
            if self.counter > 0xFFF:
                self.last_ms += 1
                self.counter = 0
        bits = self._random64()
        return (
            (self.last_ms & 0xFFFF_FFFF_FFFF) << 80
            | _VERSION_7
            | self.counter << 64
            | _VARIANT
            | bits & _RAND_B
        )


_ids = _Ids()


def _after_fork() -> None:
    # A child must not hand out the random bits its parent will also use.
    global _ids
    _ids = _Ids()


if hasattr(os, "register_at_fork"):  # only where processes fork (not on Windows)
    os.register_at_fork(after_in_child=_after_fork)


def new_id() -> str:
    h = f"{_ids.next():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
