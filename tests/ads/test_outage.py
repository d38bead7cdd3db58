"""Billing down while ads are served: the ad is served, its charge waits as a PENDING
impression, and lands exactly once when billing is back."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.ads.support import Stack, eur, rid, wait_until

LATE = datetime(2026, 1, 1, 23, 50, tzinfo=UTC)  # pacing's line is past the daily budget


def test_charge_of_an_ad_served_while_billing_is_down_lands_once_it_returns(stack: Stack) -> None:
    acc = stack.wallet("adv1", 1_000_000)
    c = stack.create("adv1", acc)  # a lone bidder: 100 micros an impression (the reserve)
    stack.clock.set(LATE)
    before = stack.serve("alice").ad
    assert before.price == eur(100) and stack.debited(acc) == 100

    stack.billing.stop()
    request_id = rid()
    served = stack.serve("bob", request_id=request_id)
    imp = served.ad.impression_id
    assert served.ad.price == eur(100)
    # The client's retry gets the very same ad: one impression, one budget reservation.
    assert stack.serve("bob", request_id=request_id) == served
    assert stack.get(c.campaign_id).spend == eur(200)
    assert stack.impression_state(imp) == "PENDING"
    # The settlement job asks again every 0.2 s while billing is down: nothing settles,
    # nothing is dropped.
    stack.clock.advance(timedelta(minutes=1))
    time.sleep(1.0)
    assert stack.impression_state(imp) == "PENDING"

    stack.restart_billing_and_ads()
    wait_until(lambda: stack.impression_state(imp) == "CHARGED")
    assert stack.debited(acc) == 200
    assert stack.ad_transfers(acc, imp) == 1
    # More rounds of the job and another retry of the serve change nothing: exactly once.
    stack.clock.advance(timedelta(minutes=1))
    time.sleep(0.6)
    assert stack.serve("bob", request_id=request_id) == served
    assert stack.ad_transfers(acc, imp) == 1
    assert stack.ad_transfers(acc, before.impression_id) == 1
    assert stack.debited(acc) == 200
    assert stack.get(c.campaign_id).spend == eur(200)
