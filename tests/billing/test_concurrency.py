"""200 concurrent authorizations against a wallet that can pay exactly 100."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from tests.billing.support import (
    MARKETING,
    Billing,
    assert_ledger_consistent,
    details,
)

PRICE = 7_000


def test_exactly_one_hundred_of_two_hundred_succeed(billing: Billing) -> None:
    wallet = billing.wallet("rush")
    billing.top_up(wallet.account_id, 100 * PRICE)
    billing.rate_card({(MARKETING, "DE"): PRICE})
    start = threading.Barrier(50)

    def attempt(i: int) -> str:
        if i < 50:
            start.wait()
        try:
            billing.authorize("rush")
            return "ok"
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            d = details(e)
            assert d["ErrorInfo"].reason == "INSUFFICIENT_FUNDS"
            assert d["QuotaFailure"].violations
            assert "RetryInfo" in d
            return "refused"

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(attempt, range(200)))

    assert outcomes.count("ok") == 100
    assert outcomes.count("refused") == 100
    acct = billing.account(wallet.account_id)
    assert acct.debits_pending.amount_micros == 100 * PRICE
    assert acct.debits_posted.amount_micros == 0
    assert acct.available.amount_micros == 0
    assert_ledger_consistent(billing.all_accounts(["business:rush"]))
