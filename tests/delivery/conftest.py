"""Fixtures for the delivery tests: consent, billing and delivery in-process on one backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bizmsg.kit.clock import ManualClock
from tests.delivery.helpers import ThreadStack, thread_stack


@pytest.fixture
def services(
    database_url_factory: Callable[[str], str], tmp_path: Path, clock: ManualClock
) -> Iterator[ThreadStack]:
    with thread_stack(database_url_factory, tmp_path, clock) as ts:
        yield ts
