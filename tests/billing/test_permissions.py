"""Who may call what: the permission matrix."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.testing import metadata_for
from tests.billing.support import MARKETING, NO_WINDOW, Billing, eur, rid

# A fresh currency per call, so each allowed CreateAccount opens a new account.
CURRENCIES = itertools.cycle(["USD", "GBP", "CHF", "JPY", "SEK", "NOK", "DKK", "PLN", "CZK"])

PRINCIPALS = [
    "admin",
    "business:acme",
    "business:other",
    "advertiser:adco",
    "advertiser:other",
    "service:delivery",
    "service:ads",
    "service:consent",
    "user:alice",
]


def _world(b: Billing) -> dict[str, str]:
    acme = b.wallet("acme")
    adco = b.advertiser("adco")
    b.top_up(acme.account_id, 1_000_000)
    b.top_up(adco.account_id, 1_000_000)
    b.rate_card({(MARKETING, "DE"): 1_000})
    auth = b.authorize("acme")
    return {"acme": acme.account_id, "adco": adco.account_id, "auth": auth.authorization_id}


# Method -> (request builder, principals allowed). Every other principal gets PERMISSION_DENIED.
MATRIX: dict[str, tuple[Callable[[dict[str, str]], Any], set[str]]] = {
    "GetAccount": (
        lambda w: pb.GetAccountRequest(account_id=w["acme"]),
        {"admin", "business:acme"},
    ),
    "GetAccount/advertiser": (
        lambda w: pb.GetAccountRequest(account_id=w["adco"]),
        {"admin", "advertiser:adco", "service:ads"},
    ),
    "ListAccounts": (
        lambda w: pb.ListAccountsRequest(owner="business:acme"),
        {"admin", "business:acme"},
    ),
    "ListTransfers": (
        lambda w: pb.ListTransfersRequest(account_id=w["acme"]),
        {"admin", "business:acme"},
    ),
    "GetStatement": (
        lambda w: pb.GetStatementRequest(account_id=w["adco"]),
        {"admin", "advertiser:adco", "service:ads"},
    ),
    "TopUp": (
        lambda w: pb.TopUpRequest(
            request_id=rid(), account_id=w["acme"], amount=eur(1), external_reference="x"
        ),
        {"admin"},
    ),
    "CreateAccount": (
        lambda w: pb.CreateAccountRequest(
            request_id=rid(),
            owner="advertiser:other",
            kind=pb.ACCOUNT_KIND_ADVERTISER_WALLET,
            currency_code=next(CURRENCIES),
        ),
        {"admin", "advertiser:other"},
    ),
    "SetRateCard": (
        lambda w: pb.SetRateCardRequest(
            request_id=rid(),
            currency_code="EUR",
            entries=[pb.RateCardEntry(category=MARKETING, recipient_country="DE", price=eur(1))],
        ),
        {"admin"},
    ),
    "GetQuote": (
        lambda w: pb.GetQuoteRequest(
            business_id="acme", recipient_country="DE", category=MARKETING, window=NO_WINDOW
        ),
        {"admin", "business:acme", "service:delivery"},
    ),
    "AuthorizeCharge": (
        lambda w: pb.AuthorizeChargeRequest(
            request_id=rid(),
            business_id="acme",
            recipient_country="DE",
            category=MARKETING,
            window=NO_WINDOW,
        ),
        {"service:delivery"},
    ),
    "CaptureCharge": (
        lambda w: pb.CaptureChargeRequest(request_id=rid(), authorization_id=w["auth"]),
        {"service:delivery"},
    ),
    "VoidCharge": (
        lambda w: pb.VoidChargeRequest(
            request_id=rid(), authorization_id="never-existed", reason=pb.VOID_REASON_FAILED
        ),
        set(),  # delivery reaches the lookup (NOT_FOUND); everyone else is refused first
    ),
    "ChargeAdEvent": (
        lambda w: pb.ChargeAdEventRequest(
            request_id=rid(),
            campaign_id="c",
            account_id=w["adco"],
            kind=pb.AD_EVENT_KIND_IMPRESSION,
            amount=eur(5),
        ),
        {"service:ads"},
    ),
}


def test_permission_matrix(billing: Billing) -> None:
    world = _world(billing)
    for method, (build, allowed) in sorted(MATRIX.items()):
        rpc = method.split("/")[0]
        for principal in PRINCIPALS:
            try:
                billing.call(principal, rpc, build(world))
                outcome = "ok"
            except grpc.RpcError as e:
                outcome = e.code().name
            if principal in allowed:
                assert outcome == "ok", (method, principal, outcome)
            elif method == "VoidCharge" and principal == "service:delivery":
                assert outcome == "NOT_FOUND"
            else:
                assert outcome == "PERMISSION_DENIED", (method, principal, outcome)


def test_business_may_open_only_its_own_prepaid_wallet(billing: Billing) -> None:
    req = pb.CreateAccountRequest(
        request_id=rid(),
        owner="business:selfserve",
        kind=pb.ACCOUNT_KIND_BUSINESS_WALLET,
        currency_code="EUR",
        credit_limit=eur(5_000_000),
    )
    with pytest.raises(grpc.RpcError) as e:
        billing.call("business:selfserve", "CreateAccount", req)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    req.ClearField("credit_limit")
    acct = billing.call("business:selfserve", "CreateAccount", req).account
    assert acct.owner == "business:selfserve" and acct.credit_limit.amount_micros == 0


def test_calls_without_a_valid_token_are_unauthenticated(billing: Billing) -> None:
    req = pb.GetRateCardRequest(currency_code="EUR")
    with pytest.raises(grpc.RpcError) as e:
        billing.stub.GetRateCard(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        billing.stub.GetRateCard(
            req, metadata=[("authorization", "Bearer not-a-token")], timeout=10
        )
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Anyone authenticated may read prices.
    billing.rate_card({(MARKETING, "DE"): 1})
    card = billing.stub.GetRateCard(req, metadata=metadata_for("user:alice"), timeout=10)
    assert card.rate_card.currency_code == "EUR"
    assert card.rate_card.entries[0].category == common_pb2.CATEGORY_MARKETING
