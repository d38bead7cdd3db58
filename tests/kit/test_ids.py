"""Server-made ids: valid UUIDv7, unique, in order, and with timestamps that keep to the clock."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from bizmsg.kit import ids
from bizmsg.kit.ids import new_id


def _ms(text: str) -> int:
    return uuid.UUID(text).int >> 80


def test_ids_are_uuid7_in_canonical_text() -> None:
    text = new_id()
    u = uuid.UUID(text)
    assert str(u) == text
    assert u.version == 7
    assert u.variant == uuid.RFC_4122


def test_many_ids_in_one_burst_are_unique_ordered_and_keep_to_the_clock() -> None:
    before = time.time_ns() // 1_000_000
    made = [new_id() for _ in range(50_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    # uuid6.uuid7 moved the timestamp a millisecond ahead for every id after the first in a
    # millisecond: 50,000 ids would have run about 50 s ahead of the clock.
    assert before <= _ms(made[0]) and _ms(made[-1]) <= after + 2


def test_ids_of_one_frozen_millisecond_stay_ordered_past_the_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ids, "_ids", ids._Ids())
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_800_000_000_000 * 1_000_000)
    made = [new_id() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    # 4,096 ids fit in a millisecond's counter (from a random start below 2,048), then the
    # timestamp moves on by one.
    assert _ms(made[0]) >= 1_800_000_000_000 and _ms(made[-1]) <= 1_800_000_000_005


def test_the_clock_stepping_back_keeps_ids_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_ids", ids._Ids())
    now = [1_800_000_000_010 * 1_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: now[0])
    first = new_id()
    now[0] -= 5 * 1_000_000
    assert new_id() > first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_its_parents_random_bits() -> None:
    new_id()  # the parent's buffer is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    parent = new_id()
    # Same millisecond or not, the 62 random bits must differ.
    assert uuid.UUID(child).int & ((1 << 62) - 1) != uuid.UUID(parent).int & ((1 << 62) - 1)
