from __future__ import annotations

from collections.abc import Iterator

import pytest

from bizmsg.kit.clock import ManualClock
from tests.billing.support import Billing, start


@pytest.fixture
def billing(database_url: str, clock: ManualClock) -> Iterator[Billing]:
    service = start(database_url, clock)
    b = Billing(service, clock)
    try:
        yield b
    finally:
        b.close()
        service.stop()
