"""Fixtures of the ads tests: consent, billing and ads in-process on the test's backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from ads_svc.app import DEFINITION as ADS
from billing_svc.app import DEFINITION as BILLING
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.testing import ServiceThread
from consent_svc.app import DEFINITION as CONSENT
from tests.ads.support import ADS_ENV, Stack


def start_stack(
    database_url_factory: Callable[[str], str], clock: ManualClock, replicas: int = 1
) -> Iterator[Stack]:
    with ExitStack() as stack:
        consent = stack.enter_context(
            ServiceThread(CONSENT, database_url=database_url_factory("consent"), clock=clock)
        )
        billing = stack.enter_context(
            ServiceThread(BILLING, database_url=database_url_factory("billing"), clock=clock)
        )
        ads_url = database_url_factory("ads")
        deps = {"consent": consent.target, "billing": billing.target}
        # Replicas after the first charge with unary calls (BIZMSG_INTERNAL_STREAMS=0), the
        # first over billing's ChargeAdEventStream: the replicated tests run both ways at once.
        unary = {**ADS_ENV, "BIZMSG_INTERNAL_STREAMS": "0"}
        envs = [ADS_ENV if i == 0 else unary for i in range(replicas)]
        ads = [
            stack.enter_context(
                ServiceThread(
                    ADS, database_url=ads_url, clock=clock, env=env, dependency_targets=deps
                )
            )
            for env in envs
        ]
        s = Stack(clock, consent, billing, ads)
        try:
            yield s
        finally:
            s.close()


@pytest.fixture
def stack(database_url_factory: Callable[[str], str], clock: ManualClock) -> Iterator[Stack]:
    yield from start_stack(database_url_factory, clock)


@pytest.fixture
def replicated(database_url_factory: Callable[[str], str], clock: ManualClock) -> Iterator[Stack]:
    """Two ads replicas on one database (one charging over the stream, one unary)."""
    yield from start_stack(database_url_factory, clock, replicas=2)
