"""Each pricing rule, the quote agreeing with the charge, and rate-card effective dates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest

from bizmsg.billing.v1 import billing_pb2 as pb
from tests.billing.support import (
    ADMIN,
    AUTHENTICATION,
    CS_WINDOW,
    DELIVERY,
    FREE_ENTRY,
    MARKETING,
    NO_WINDOW,
    SERVICE,
    UTILITY,
    Billing,
    fails,
)

CARD = {
    (MARKETING, "DE"): 60_000,
    (MARKETING, ""): 90_000,
    (UTILITY, "DE"): 20_000,
    (AUTHENTICATION, "DE"): 30_000,
}

CASES = [
    # category, window, expected price, expected rule
    (MARKETING, NO_WINDOW, 60_000, pb.PRICING_RULE_RATE_CARD),
    (MARKETING, CS_WINDOW, 60_000, pb.PRICING_RULE_RATE_CARD),
    (MARKETING, FREE_ENTRY, 0, pb.PRICING_RULE_FREE_ENTRY_WINDOW),
    (AUTHENTICATION, NO_WINDOW, 30_000, pb.PRICING_RULE_RATE_CARD),
    (AUTHENTICATION, CS_WINDOW, 30_000, pb.PRICING_RULE_RATE_CARD),
    (AUTHENTICATION, FREE_ENTRY, 0, pb.PRICING_RULE_FREE_ENTRY_WINDOW),
    (UTILITY, NO_WINDOW, 20_000, pb.PRICING_RULE_RATE_CARD),
    (UTILITY, CS_WINDOW, 0, pb.PRICING_RULE_UTILITY_IN_SERVICE_WINDOW),
    (UTILITY, FREE_ENTRY, 0, pb.PRICING_RULE_FREE_ENTRY_WINDOW),
    (SERVICE, NO_WINDOW, 0, pb.PRICING_RULE_SERVICE_FREE),
    (SERVICE, CS_WINDOW, 0, pb.PRICING_RULE_SERVICE_FREE),
    (SERVICE, FREE_ENTRY, 0, pb.PRICING_RULE_FREE_ENTRY_WINDOW),
]


def quote(b: Billing, business: str, category: int, window: int, country: str = "DE") -> Any:
    req = pb.GetQuoteRequest(
        business_id=business, recipient_country=country, category=category, window=window
    )
    return b.call(f"business:{business}", "GetQuote", req)


def test_every_rule_and_the_quote_agrees_with_the_charge(billing: Billing) -> None:
    w = billing.wallet("shop")
    billing.top_up(w.account_id, 10_000_000)
    billing.rate_card(CARD)
    pending = 0
    for category, window, price, rule in CASES:
        q = quote(billing, "shop", category, window)
        auth = billing.authorize("shop", category=category, window=window)
        for r in (q, auth):
            assert (r.price.amount_micros, r.rule, r.free) == (price, rule, price == 0), (
                category,
                window,
            )
            assert r.price.currency_code == "EUR"
        assert auth.state == pb.AUTHORIZATION_STATE_AUTHORIZED
        assert bool(auth.pending_transfer_id) == (price > 0)
        pending += price
    assert billing.account(w.account_id).debits_pending.amount_micros == pending


def test_default_country_entry_and_missing_price(billing: Billing) -> None:
    billing.wallet("intl")
    billing.rate_card(CARD)
    assert quote(billing, "intl", MARKETING, NO_WINDOW, "BR").price.amount_micros == 90_000
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "NO_PRICE") as d:
        quote(billing, "intl", AUTHENTICATION, NO_WINDOW, "BR")
    assert d["PreconditionFailure"].violations


def test_free_message_needs_no_wallet_but_a_charged_one_does(billing: Billing) -> None:
    billing.rate_card(CARD)
    auth = billing.authorize("nowallet", category=SERVICE, window=CS_WINDOW)
    assert auth.free and auth.account_id == "" and auth.price.currency_code == ""
    assert billing.capture(auth.authorization_id).state == pb.AUTHORIZATION_STATE_CAPTURED
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "NO_WALLET"):
        billing.authorize("nowallet", category=MARKETING)


def test_free_message_capture_moves_no_money(billing: Billing) -> None:
    w = billing.wallet("freebie")
    billing.top_up(w.account_id, 1_000)
    auth = billing.authorize("freebie", category=UTILITY, window=CS_WINDOW)
    cap = billing.capture(auth.authorization_id)
    assert cap.transfer_id == "" and cap.amount.amount_micros == 0
    acct = billing.account(w.account_id)
    assert (acct.debits_posted.amount_micros, acct.debits_pending.amount_micros) == (0, 0)


def test_rate_card_applies_from_its_effective_date_only(billing: Billing) -> None:
    w = billing.wallet("dated")
    billing.top_up(w.account_id, 10_000_000)
    v1 = billing.rate_card({(MARKETING, "DE"): 10_000})
    tomorrow = billing.clock.now() + timedelta(days=1)
    v2 = billing.rate_card({(MARKETING, "DE"): 25_000}, effective=tomorrow)
    assert (v1.version, v2.version) == (1, 2)

    assert quote(billing, "dated", MARKETING, NO_WINDOW).rate_card_version == 1
    before = billing.authorize("dated")
    assert (before.price.amount_micros, before.rate_card_version) == (10_000, 1)

    billing.clock.advance(timedelta(days=1))
    after = billing.authorize("dated")
    assert (after.price.amount_micros, after.rate_card_version) == (25_000, 2)
    # The earlier authorization keeps its price when captured under the new card.
    assert billing.capture(before.authorization_id).amount.amount_micros == 10_000

    # Both versions are kept and readable.
    for version, price in ((1, 10_000), (2, 25_000)):
        req = pb.GetRateCardRequest(currency_code="EUR", version=version)
        card = billing.call(DELIVERY, "GetRateCard", req).rate_card
        assert card.entries[0].price.amount_micros == price
    past = pb.GetRateCardRequest(currency_code="EUR")
    past.at_time.FromDatetime(tomorrow - timedelta(seconds=1))
    assert billing.call(ADMIN, "GetRateCard", past).rate_card.version == 1


@pytest.mark.parametrize("days", [-1])
def test_rate_card_cannot_start_in_the_past(billing: Billing, days: int) -> None:
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as d:
        billing.rate_card(
            {(MARKETING, "DE"): 1}, effective=billing.clock.now() + timedelta(days=days)
        )
    assert d["BadRequest"].field_violations[0].field == "effective_time"
    with fails(grpc.StatusCode.NOT_FOUND, "RATE_CARD_NOT_FOUND"):
        billing.call(ADMIN, "GetRateCard", pb.GetRateCardRequest(currency_code="EUR"))
