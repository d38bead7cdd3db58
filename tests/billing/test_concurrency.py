"""200 concurrent charges against a wallet that can pay exactly 100: authorizations of a
business, ad charges of an advertiser."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from bizmsg.billing.v1 import billing_pb2 as pb
from tests.billing.support import (
    ADS,
    MARKETING,
    Billing,
    assert_ledger_consistent,
    details,
    eur,
    rid,
)

PRICE = 7_000


def _two_hundred_at_once(charge: Callable[[], object]) -> list[str]:
    """`charge` made 200 times from 50 threads, the first 50 released together: "ok" for each
    that passed, "refused" for each refused for funds (INSUFFICIENT_FUNDS, with its details)."""
    start = threading.Barrier(50)

    def attempt(i: int) -> str:
        if i < 50:
            start.wait()
        try:
            charge()
            return "ok"
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            d = details(e)
            assert d["ErrorInfo"].reason == "INSUFFICIENT_FUNDS"
            assert d["QuotaFailure"].violations
            assert "RetryInfo" in d
            return "refused"

    with ThreadPoolExecutor(max_workers=50) as pool:
        return list(pool.map(attempt, range(200)))


def test_exactly_one_hundred_of_two_hundred_succeed(billing: Billing) -> None:
    wallet = billing.wallet("rush")
    billing.top_up(wallet.account_id, 100 * PRICE)
    billing.rate_card({(MARKETING, "DE"): PRICE})
    outcomes = _two_hundred_at_once(lambda: billing.authorize("rush"))

    assert outcomes.count("ok") == 100
    assert outcomes.count("refused") == 100
    acct = billing.account(wallet.account_id)
    assert acct.debits_pending.amount_micros == 100 * PRICE
    assert acct.debits_posted.amount_micros == 0
    assert acct.available.amount_micros == 0
    assert_ledger_consistent(billing.all_accounts(["business:rush"]))


def test_ad_charges_of_one_advertiser_at_once_pass_exactly_as_far_as_the_funds(
    billing: Billing,
) -> None:
    # Charges that arrive together share a group commit, where the wallet's debits (and the
    # revenue account's credits) go in as one sum: a sum the wallet cannot pay sends the batch
    # round again charge by charge, so exactly the ones that fit pass.
    wallet = billing.advertiser("crowd")
    billing.top_up(wallet.account_id, 100 * PRICE)

    def charge() -> object:
        request = pb.ChargeAdEventRequest(
            request_id=rid("evt"),
            campaign_id="camp",
            account_id=wallet.account_id,
            kind=pb.AD_EVENT_KIND_IMPRESSION,
            amount=eur(PRICE),
        )
        return billing.call(ADS, "ChargeAdEvent", request)

    outcomes = _two_hundred_at_once(charge)

    assert outcomes.count("ok") == 100
    assert outcomes.count("refused") == 100
    acct = billing.account(wallet.account_id)
    assert acct.debits_posted.amount_micros == 100 * PRICE
    assert acct.available.amount_micros == 0
    assert_ledger_consistent(billing.all_accounts(["advertiser:crowd"]))
