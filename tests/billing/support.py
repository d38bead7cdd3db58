"""Helpers for the billing tests: a harness around one in-process billing service."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc

from billing_svc.app import DEFINITION
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.billing.v1 import billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.testing import ServiceThread, error_details, expect_error, metadata_for

ADMIN = "admin"
DELIVERY = "service:delivery"
ADS = "service:ads"
MARKETING = common_pb2.CATEGORY_MARKETING
UTILITY = common_pb2.CATEGORY_UTILITY
AUTHENTICATION = common_pb2.CATEGORY_AUTHENTICATION
SERVICE = common_pb2.CATEGORY_SERVICE
NO_WINDOW = common_pb2.WINDOW_KIND_NONE
CS_WINDOW = common_pb2.WINDOW_KIND_CUSTOMER_SERVICE
FREE_ENTRY = common_pb2.WINDOW_KIND_FREE_ENTRY
ENV = {"BIZMSG_BILLING_SWEEP_INTERVAL_SECONDS": "0.1"}

_ids = itertools.count(1)


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


def eur(micros: int) -> common_pb2.Money:
    return common_pb2.Money(amount_micros=micros, currency_code="EUR")


details = error_details


def fails(
    code: grpc.StatusCode, reason: str | None = None
) -> AbstractContextManager[dict[str, Any]]:
    """Expect the block's call to fail with `code` (and ErrorInfo `reason`); yields details."""
    return expect_error(code, reason, domain="billing.bizmsg")


@dataclass
class Billing:
    """A running billing service with a stub per principal."""

    service: ServiceThread
    clock: ManualClock
    channel: grpc.Channel = field(init=False)
    stub: billing_pb2_grpc.BillingServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.service.target)
        self.stub = billing_pb2_grpc.BillingServiceStub(self.channel)

    def call(self, principal: str, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=metadata_for(principal), timeout=30)

    def close(self) -> None:
        self.channel.close()

    # Conveniences (all as the principal allowed to do them).

    def wallet(self, business: str, *, credit_limit: int = 0, currency: str = "EUR") -> pb.Account:
        req = pb.CreateAccountRequest(
            request_id=rid("acct"),
            owner=f"business:{business}",
            kind=pb.ACCOUNT_KIND_BUSINESS_WALLET,
            currency_code=currency,
            credit_limit=common_pb2.Money(amount_micros=credit_limit, currency_code=currency),
        )
        return self.call(ADMIN, "CreateAccount", req).account  # type: ignore[no-any-return]

    def advertiser(self, advertiser: str, *, currency: str = "EUR") -> pb.Account:
        req = pb.CreateAccountRequest(
            request_id=rid("acct"),
            owner=f"advertiser:{advertiser}",
            kind=pb.ACCOUNT_KIND_ADVERTISER_WALLET,
            currency_code=currency,
        )
        return self.call(ADMIN, "CreateAccount", req).account  # type: ignore[no-any-return]

    def top_up(self, account_id: str, micros: int, currency: str = "EUR") -> pb.TopUpResponse:
        req = pb.TopUpRequest(
            request_id=rid("top"),
            account_id=account_id,
            amount=common_pb2.Money(amount_micros=micros, currency_code=currency),
            external_reference=f"psp-{rid()}",
        )
        return self.call(ADMIN, "TopUp", req)  # type: ignore[no-any-return]

    def rate_card(
        self,
        prices: dict[tuple[int, str], int],
        *,
        effective: Any = None,
        currency: str = "EUR",
    ) -> pb.RateCard:
        req = pb.SetRateCardRequest(
            request_id=rid("card"),
            currency_code=currency,
            entries=[
                pb.RateCardEntry(
                    category=c,
                    recipient_country=country,
                    price=common_pb2.Money(amount_micros=p, currency_code=currency),
                )
                for (c, country), p in prices.items()
            ],
        )
        if effective is not None:
            req.effective_time.FromDatetime(effective)
        return self.call(ADMIN, "SetRateCard", req).rate_card  # type: ignore[no-any-return]

    def authorize(
        self,
        business: str,
        *,
        category: int = MARKETING,
        window: int = NO_WINDOW,
        country: str = "DE",
        request_id: str | None = None,
    ) -> pb.AuthorizeChargeResponse:
        req = pb.AuthorizeChargeRequest(
            request_id=request_id or rid("msg"),
            business_id=business,
            recipient_country=country,
            category=category,
            window=window,
        )
        return self.call(DELIVERY, "AuthorizeCharge", req)  # type: ignore[no-any-return]

    def capture(self, authorization_id: str, request_id: str | None = None) -> Any:
        req = pb.CaptureChargeRequest(
            request_id=request_id or rid("cap"), authorization_id=authorization_id
        )
        return self.call(DELIVERY, "CaptureCharge", req)

    def void(self, authorization_id: str, request_id: str | None = None) -> Any:
        req = pb.VoidChargeRequest(
            request_id=request_id or rid("void"),
            authorization_id=authorization_id,
            reason=pb.VOID_REASON_EXPIRED,
        )
        return self.call(DELIVERY, "VoidCharge", req)

    def account(self, account_id: str) -> pb.Account:
        req = pb.GetAccountRequest(account_id=account_id)
        return self.call(ADMIN, "GetAccount", req).account  # type: ignore[no-any-return]

    def all_accounts(self, owners: list[str]) -> list[pb.Account]:
        out: list[pb.Account] = []
        for owner in [*owners, "platform"]:
            req = pb.ListAccountsRequest(owner=owner, page_size=100)
            out.extend(self.call(ADMIN, "ListAccounts", req).accounts)
        return out

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        """Poll a background effect (the sweep); generous bound, not a timing assertion."""
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            time.sleep(0.05)


def start(database_url: str, clock: ManualClock) -> ServiceThread:
    return ServiceThread(DEFINITION, database_url=database_url, clock=clock, env=ENV).start()


def assert_ledger_consistent(accounts: list[pb.Account]) -> None:
    """Each account's invariant, and all balances summing to zero per currency."""
    sums: dict[str, list[int]] = {}
    for a in accounts:
        cp, dp = a.credits_posted.amount_micros, a.debits_posted.amount_micros
        dpend, cpend = a.debits_pending.amount_micros, a.credits_pending.amount_micros
        assert dp + dpend <= cp + a.credit_limit.amount_micros, a
        assert a.available.amount_micros == min(
            cp + a.credit_limit.amount_micros - dp - dpend, 2**63 - 1
        )
        s = sums.setdefault(a.currency_code, [0, 0, 0, 0])
        s[0] += cp
        s[1] += dp
        s[2] += cpend
        s[3] += dpend
    for currency, (cp, dp, cpend, dpend) in sums.items():
        assert cp == dp, f"{currency}: posted credits {cp} != posted debits {dp}"
        assert cpend == dpend, f"{currency}: pending credits {cpend} != pending debits {dpend}"
