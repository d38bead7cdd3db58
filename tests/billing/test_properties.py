"""Property-based: random sequences of top-ups, authorizations, captures, voids, replays,
timeouts and ad charges. After every step the service agrees with a model, every account
keeps its invariant, all balances sum to zero, and the statement adds up to the ledger."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from billing_svc.models import AccountRow
from bizmsg.billing.v1 import billing_pb2 as pb
from tests.billing.support import (
    ADMIN,
    ADS,
    AUTHENTICATION,
    CS_WINDOW,
    DELIVERY,
    FREE_ENTRY,
    MARKETING,
    NO_WINDOW,
    SERVICE,
    UTILITY,
    Billing,
    eur,
    rid,
)

PRICES = {MARKETING: 100_000, UTILITY: 40_000, AUTHENTICATION: 25_000}
TIMEOUTS = [timedelta(minutes=30), timedelta(hours=3), None]  # None: the service default
_machines = itertools.count()


def expected_price(category: int, window: int) -> int:
    """An independent statement of the pricing rules."""
    if window == FREE_ENTRY or category == SERVICE:
        return 0
    if category == UTILITY and window == CS_WINDOW:
        return 0
    return PRICES[category]


@dataclass
class Auth:
    id: str
    price: int
    expire_at: datetime
    state: int = pb.AUTHORIZATION_STATE_AUTHORIZED


async def _ledger_totals(db: Any) -> tuple[list[Any], int]:
    a = AccountRow
    async with db.read() as session:
        sums = (
            await session.execute(
                select(
                    a.currency,
                    func.sum(a.credits_posted),
                    func.sum(a.debits_posted),
                    func.sum(a.credits_pending),
                    func.sum(a.debits_pending),
                ).group_by(a.currency)
            )
        ).all()
        broken = (
            await session.execute(
                select(func.count()).where(
                    a.debits_posted + a.debits_pending > a.credits_posted + a.credit_limit
                )
            )
        ).scalar_one()
    return list(sums), int(broken)


def test_ledger_properties(billing: Billing) -> None:
    billing.rate_card({(c, "DE"): p for c, p in PRICES.items()})

    class Ledger(RuleBasedStateMachine):
        auths = Bundle("auths")

        def __init__(self) -> None:
            super().__init__()
            n = next(_machines)
            self.business = f"prop{n}"
            self.limit = [0, 150_000][n % 2]
            self.wallet = billing.wallet(self.business, credit_limit=self.limit).account_id
            self.adv = billing.advertiser(f"prop{n}").account_id
            self.credits = self.debits = self.pending = 0
            self.adv_credits = self.adv_debits = 0
            self.tracked: list[Auth] = []
            self.last: tuple[pb.AuthorizeChargeRequest, pb.AuthorizeChargeResponse] | None = None

        def available(self) -> int:
            return self.credits + self.limit - self.debits - self.pending

        @rule(amount=st.integers(1, 400_000))
        def top_up(self, amount: int) -> None:
            billing.top_up(self.wallet, amount)
            self.credits += amount

        @rule(
            target=auths,
            category=st.sampled_from([MARKETING, UTILITY, AUTHENTICATION, SERVICE]),
            window=st.sampled_from([NO_WINDOW, CS_WINDOW, FREE_ENTRY]),
            timeout=st.sampled_from(TIMEOUTS),
        )
        def authorize(self, category: int, window: int, timeout: timedelta | None) -> Any:
            req = pb.AuthorizeChargeRequest(
                request_id=rid("pmsg"),
                business_id=self.business,
                recipient_country="DE",
                category=category,
                window=window,
            )
            if timeout is not None:
                req.timeout.FromTimedelta(timeout)
            price = expected_price(category, window)
            try:
                resp = billing.call(DELIVERY, "AuthorizeCharge", req)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert price > self.available()
                return None  # refused: nothing to track
            assert price <= self.available()
            assert resp.price.amount_micros == price
            self.pending += price
            self.last = (req, resp)
            auth = Auth(resp.authorization_id, price, resp.expire_time.ToDatetime(tzinfo=UTC))
            self.tracked.append(auth)
            return auth

        @rule()
        def replay(self) -> None:
            if self.last is not None:
                req, resp = self.last
                assert billing.call(DELIVERY, "AuthorizeCharge", req) == resp

        @rule(auth=auths)
        def capture(self, auth: Auth | None) -> None:
            if auth is None:
                return
            try:
                billing.capture(auth.id)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert auth.state != pb.AUTHORIZATION_STATE_AUTHORIZED
                return
            assert auth.state == pb.AUTHORIZATION_STATE_AUTHORIZED
            auth.state = pb.AUTHORIZATION_STATE_CAPTURED
            self.pending -= auth.price
            self.debits += auth.price

        @rule(auth=auths)
        def void(self, auth: Auth | None) -> None:
            if auth is None:
                return
            try:
                billing.void(auth.id)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert auth.state != pb.AUTHORIZATION_STATE_AUTHORIZED
                return
            assert auth.state == pb.AUTHORIZATION_STATE_AUTHORIZED
            auth.state = pb.AUTHORIZATION_STATE_VOIDED
            self.pending -= auth.price

        @rule(amount=st.integers(1, 50_000))
        def ad_charge(self, amount: int) -> None:
            req = pb.ChargeAdEventRequest(
                request_id=rid("pevt"),
                campaign_id="camp",
                account_id=self.adv,
                kind=pb.AD_EVENT_KIND_CLICK,
                amount=eur(amount),
            )
            if amount > self.adv_credits - self.adv_debits:
                try:
                    billing.call(ADS, "ChargeAdEvent", req)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    billing.top_up(self.adv, amount)
                    self.adv_credits += amount
                else:
                    raise AssertionError("an advertiser that cannot pay was charged")
            billing.call(ADS, "ChargeAdEvent", req)
            self.adv_debits += amount

        @rule()
        def time_passes(self) -> None:
            now = billing.clock.advance(timedelta(hours=1))
            for auth in self.tracked:
                if auth.state == pb.AUTHORIZATION_STATE_AUTHORIZED and auth.expire_at <= now:
                    auth.state = pb.AUTHORIZATION_STATE_EXPIRED
                    self.pending -= auth.price
            billing.wait_for(
                lambda: billing.account(self.wallet).debits_pending.amount_micros == self.pending,
                "the sweep to void expired authorizations",
            )

        @invariant()
        def ledger_holds(self) -> None:
            w = billing.account(self.wallet)
            assert w.credits_posted.amount_micros == self.credits
            assert w.debits_posted.amount_micros == self.debits
            assert w.debits_pending.amount_micros == self.pending
            assert w.available.amount_micros == self.available()
            adv = billing.account(self.adv)
            assert adv.debits_posted.amount_micros == self.adv_debits
            sums, broken = billing.service.run(_ledger_totals(billing.service.runtime.db))
            assert broken == 0
            for currency, cp, dp, cpend, dpend in sums:
                assert (cp, cpend) == (dp, dpend), currency
            s = billing.call(
                ADMIN, "GetStatement", pb.GetStatementRequest(account_id=self.wallet)
            ).statement
            assert s.closing_balance.amount_micros == self.credits - self.debits
            assert s.total_debits.amount_micros == sum(x.debits.amount_micros for x in s.lines)
            assert s.total_credits.amount_micros == sum(x.credits.amount_micros for x in s.lines)
            assert s.closing_balance.amount_micros == (
                s.opening_balance.amount_micros
                + s.total_credits.amount_micros
                - s.total_debits.amount_micros
            )

    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=12,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
