"""Bad input: INVALID_ARGUMENT with BadRequest naming the fields, and nothing changed."""

from __future__ import annotations

from typing import Any

import grpc

from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.common.v1 import common_pb2
from tests.billing.support import (
    ADMIN,
    ADS,
    DELIVERY,
    MARKETING,
    NO_WINDOW,
    Billing,
    eur,
    fails,
    rid,
)

INT64_MAX = 2**63 - 1


def _setup(b: Billing) -> dict[str, str]:
    w = b.wallet("bad")
    adv = b.advertiser("badads")
    b.top_up(w.account_id, 1_000_000)
    b.top_up(adv.account_id, 1_000)
    b.rate_card({(MARKETING, "DE"): 1_000})
    return {"wallet": w.account_id, "adv": adv.account_id}


CASES: list[tuple[str, str, Any, set[str]]] = [
    (
        DELIVERY,
        "AuthorizeCharge",
        lambda ids: pb.AuthorizeChargeRequest(
            request_id="has space", business_id="", recipient_country="de", category=0, window=9
        ),
        {"request_id", "business_id", "recipient_country", "category", "window"},
    ),
    (
        DELIVERY,
        "AuthorizeCharge",
        lambda ids: pb.AuthorizeChargeRequest(
            request_id=rid(),
            business_id="bad",
            recipient_country="DEU",
            category=MARKETING,
            window=NO_WINDOW,
            timeout={"seconds": -5},
        ),
        {"recipient_country", "timeout"},
    ),
    (
        DELIVERY,
        "CaptureCharge",
        lambda ids: pb.CaptureChargeRequest(request_id="", authorization_id=""),
        {"request_id", "authorization_id"},
    ),
    (
        DELIVERY,
        "VoidCharge",
        lambda ids: pb.VoidChargeRequest(request_id=rid(), authorization_id="x", reason=0),
        {"reason"},
    ),
    (
        ADMIN,
        "TopUp",
        lambda ids: pb.TopUpRequest(
            request_id=rid(),
            account_id=ids["wallet"],
            amount=common_pb2.Money(amount_micros=-5, currency_code="eur"),
        ),
        {"amount.amount_micros", "amount.currency_code", "external_reference"},
    ),
    (
        ADMIN,
        "TopUp",
        lambda ids: pb.TopUpRequest(
            request_id=rid(),
            account_id=ids["wallet"],
            amount=common_pb2.Money(amount_micros=5, currency_code="USD"),
            external_reference="r",
        ),
        {"amount.currency_code"},
    ),
    (
        ADS,
        "ChargeAdEvent",
        lambda ids: pb.ChargeAdEventRequest(
            request_id=rid(), campaign_id="c", account_id=ids["adv"], kind=7, amount=eur(0)
        ),
        {"kind", "amount.amount_micros"},
    ),
    (
        ADS,
        "ChargeAdEvent",
        lambda ids: pb.ChargeAdEventRequest(
            request_id=rid(),
            campaign_id="c",
            account_id=ids["wallet"],
            kind=pb.AD_EVENT_KIND_CLICK,
            amount=eur(1),
        ),
        {"account_id"},
    ),
    (
        ADMIN,
        "CreateAccount",
        lambda ids: pb.CreateAccountRequest(
            request_id=rid(),
            owner="business:x",
            kind=pb.ACCOUNT_KIND_ADVERTISER_WALLET,
            currency_code="EURO",
            credit_limit=common_pb2.Money(amount_micros=-1, currency_code="EUR"),
        ),
        {"owner", "currency_code", "credit_limit.amount_micros", "credit_limit.currency_code"},
    ),
    (
        ADMIN,
        "CreateAccount",
        lambda ids: pb.CreateAccountRequest(
            request_id=rid(),
            owner="platform",
            kind=pb.ACCOUNT_KIND_EXTERNAL_SETTLEMENT,
            currency_code="EUR",
        ),
        {"kind"},
    ),
    (
        ADMIN,
        "SetRateCard",
        lambda ids: pb.SetRateCardRequest(
            request_id=rid(),
            currency_code="EUR",
            entries=[
                pb.RateCardEntry(category=MARKETING, recipient_country="DE", price=eur(1)),
                pb.RateCardEntry(category=MARKETING, recipient_country="DE", price=eur(2)),
                pb.RateCardEntry(
                    category=0,
                    recipient_country="Germany",
                    price=common_pb2.Money(amount_micros=-1, currency_code="USD"),
                ),
            ],
        ),
        {
            "entries[1]",
            "entries[2].category",
            "entries[2].recipient_country",
            "entries[2].price.amount_micros",
            "entries[2].price.currency_code",
        },
    ),
    (
        ADMIN,
        "ListTransfers",
        lambda ids: pb.ListTransfersRequest(
            account_id=ids["wallet"],
            start_time={"seconds": 2000},
            end_time={"seconds": 1000},
            page_size=-1,
            page_token="!!!",
        ),
        {"end_time", "page_size", "page_token"},
    ),
    (
        ADMIN,
        "GetQuote",
        lambda ids: pb.GetQuoteRequest(business_id="bad", recipient_country="", category=99),
        {"recipient_country", "category", "window"},
    ),
]


def _snapshot(b: Billing, ids: dict[str, str]) -> tuple[Any, ...]:
    req = pb.ListTransfersRequest(account_id=ids["wallet"], page_size=1000)
    return (
        b.account(ids["wallet"]),
        b.account(ids["adv"]),
        len(b.call(ADMIN, "ListTransfers", req).transfers),
        b.call(ADMIN, "GetRateCard", pb.GetRateCardRequest(currency_code="EUR")).rate_card,
    )


def test_bad_input_is_refused_and_changes_nothing(billing: Billing) -> None:
    ids = _setup(billing)
    before = _snapshot(billing, ids)
    for principal, method, build, fields in CASES:
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT") as d:
            billing.call(principal, method, build(ids))
        got = {v.field for v in d["BadRequest"].field_violations}
        assert got == fields, method
    assert _snapshot(billing, ids) == before


def test_overflow_and_mixed_currencies_are_refused(billing: Billing) -> None:
    ids = _setup(billing)
    before = _snapshot(billing, ids)
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_OVERFLOW"):
        billing.top_up(ids["wallet"], INT64_MAX)
    assert _snapshot(billing, ids) == before
    usd = billing.wallet("dollars", currency="USD")
    billing.top_up(usd.account_id, INT64_MAX, currency="USD")
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_OVERFLOW"):
        billing.top_up(usd.account_id, 1, currency="USD")
    assert billing.account(usd.account_id).available.amount_micros == INT64_MAX
    # A USD wallet is priced by the USD card only; there is none, so nothing is charged.
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "NO_PRICE"):
        billing.authorize("dollars")
    assert _snapshot(billing, ids) == before


def test_insufficient_funds_reserves_nothing(billing: Billing) -> None:
    ids = _setup(billing)
    charge = pb.ChargeAdEventRequest(
        request_id="evt-poor",
        campaign_id="c",
        account_id=ids["adv"],
        kind=pb.AD_EVENT_KIND_CLICK,
        amount=eur(1_001),
    )
    before = _snapshot(billing, ids)
    with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_FUNDS") as d:
        billing.call(ADS, "ChargeAdEvent", charge)
    assert d["QuotaFailure"].violations[0].subject == f"accounts/{ids['adv']}"
    assert d["RetryInfo"].retry_delay.seconds > 0
    assert _snapshot(billing, ids) == before
    # Nothing was recorded under the request_id: after a top-up the same event goes through.
    billing.top_up(ids["adv"], 1)
    assert billing.call(ADS, "ChargeAdEvent", charge).amount.amount_micros == 1_001
    assert billing.account(ids["adv"]).available.amount_micros == 0


def test_duplicate_business_wallet_is_refused(billing: Billing) -> None:
    billing.wallet("twice")
    with fails(grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS"):
        billing.wallet("twice", currency="USD")
