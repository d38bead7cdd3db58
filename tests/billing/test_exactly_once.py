"""Replays of a request_id, reuse with other parameters, restarts, resolving once, and the
service voiding authorizations nobody resolved."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc

from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.clock import ManualClock
from tests.billing.support import (
    ADMIN,
    ADS,
    MARKETING,
    NO_WINDOW,
    UTILITY,
    Billing,
    assert_ledger_consistent,
    eur,
    fails,
    start,
)


def _funded(b: Billing, name: str, micros: int = 1_000_000, price: int = 100_000) -> str:
    w = b.wallet(name)
    b.top_up(w.account_id, micros)
    b.rate_card({(MARKETING, "DE"): price, (UTILITY, "DE"): price // 2})
    return w.account_id


def test_authorize_replay_returns_the_first_answer_and_reserves_once(billing: Billing) -> None:
    wallet = _funded(billing, "replay")
    first = billing.authorize("replay", request_id="msg-1")
    again = billing.authorize("replay", request_id="msg-1")
    assert again == first
    assert billing.account(wallet).debits_pending.amount_micros == 100_000
    with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
        billing.authorize("replay", request_id="msg-1", category=UTILITY)
    assert billing.account(wallet).debits_pending.amount_micros == 100_000


def test_twins_sent_at_once_reserve_once(billing: Billing) -> None:
    """Calls sent together share a group commit, whose request_id keys go in together just
    before the commit: twins among them (the same request_id 4 times, 3 ids in all) fail that
    insert, the batch runs again call by call, and every twin gets the first answer. Each id
    reserves once, alongside 6 other calls of the same moment."""
    wallet = _funded(billing, "twins")
    ids = [f"twin-{i % 3}" for i in range(12)] + [f"single-{i}" for i in range(6)]
    barrier = threading.Barrier(len(ids))

    def one(request_id: str) -> pb.AuthorizeChargeResponse:
        barrier.wait()
        return billing.authorize("twins", request_id=request_id)

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        answers = list(pool.map(one, ids))
    by_id: dict[str, set[str]] = {}
    for request_id, answer in zip(ids, answers, strict=True):
        by_id.setdefault(request_id, set()).add(answer.authorization_id)
    assert all(len(auths) == 1 for auths in by_id.values()), by_id
    assert len({a for auths in by_id.values() for a in auths}) == 9
    assert billing.account(wallet).debits_pending.amount_micros == 9 * 100_000
    assert_ledger_consistent(billing.all_accounts(["business:twins"]))


def test_top_up_and_ad_charge_replays(billing: Billing) -> None:
    adv = billing.advertiser("adv")
    top = pb.TopUpRequest(
        request_id="pay-1", account_id=adv.account_id, amount=eur(500), external_reference="p1"
    )
    assert billing.call(ADMIN, "TopUp", top) == billing.call(ADMIN, "TopUp", top)
    top.amount.amount_micros = 501
    with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
        billing.call(ADMIN, "TopUp", top)
    charge = pb.ChargeAdEventRequest(
        request_id="evt-1",
        campaign_id="c1",
        account_id=adv.account_id,
        kind=pb.AD_EVENT_KIND_CLICK,
        amount=eur(200),
    )
    first = billing.call(ADS, "ChargeAdEvent", charge)
    assert billing.call(ADS, "ChargeAdEvent", charge) == first
    acct = billing.account(adv.account_id)
    assert acct.credits_posted.amount_micros == 500
    assert acct.debits_posted.amount_micros == 200
    charge.kind = pb.AD_EVENT_KIND_IMPRESSION
    with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
        billing.call(ADS, "ChargeAdEvent", charge)


def test_replays_survive_a_restart(database_url: str, clock: ManualClock) -> None:
    service = start(database_url, clock)
    b = Billing(service, clock)
    wallet = _funded(b, "restart")
    auth = b.authorize("restart", request_id="m-restart")
    cap = b.capture(auth.authorization_id, request_id="cap-restart")
    b.close()
    service.stop()

    service = start(database_url, clock)
    b = Billing(service, clock)
    try:
        assert b.authorize("restart", request_id="m-restart") == auth
        assert b.capture(auth.authorization_id, request_id="cap-restart") == cap
        with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
            b.authorize("restart", request_id="m-restart", country="FR")
        acct = b.account(wallet)
        assert acct.debits_posted.amount_micros == 100_000
        assert acct.debits_pending.amount_micros == 0
    finally:
        b.close()
        service.stop()


def test_capture_and_void_resolve_once(billing: Billing) -> None:
    wallet = _funded(billing, "once")
    a = billing.authorize("once")
    billing.capture(a.authorization_id, request_id="c-1")
    assert billing.capture(a.authorization_id, request_id="c-1").state == (
        pb.AUTHORIZATION_STATE_CAPTURED
    )
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_CAPTURED"):
        billing.capture(a.authorization_id)
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_CAPTURED"):
        billing.void(a.authorization_id)

    b = billing.authorize("once")
    voided = billing.void(b.authorization_id)
    assert voided.state == pb.AUTHORIZATION_STATE_VOIDED
    assert voided.amount.amount_micros == 100_000
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_VOIDED"):
        billing.capture(b.authorization_id)
    with fails(grpc.StatusCode.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        billing.capture("no-such-authorization")

    acct = billing.account(wallet)
    assert acct.debits_posted.amount_micros == 100_000
    assert acct.debits_pending.amount_micros == 0
    assert_ledger_consistent(billing.all_accounts(["business:once"]))


def test_unresolved_authorization_is_voided_after_its_timeout(billing: Billing) -> None:
    wallet = _funded(billing, "late")
    req = pb.AuthorizeChargeRequest(
        request_id="m-late",
        business_id="late",
        recipient_country="DE",
        category=MARKETING,
        window=NO_WINDOW,
    )
    req.timeout.FromTimedelta(timedelta(minutes=10))
    short = billing.call("service:delivery", "AuthorizeCharge", req)
    default = billing.authorize("late")
    assert billing.account(wallet).debits_pending.amount_micros == 200_000

    billing.clock.advance(timedelta(minutes=10))
    billing.wait_for(
        lambda: billing.account(wallet).debits_pending.amount_micros == 100_000,
        "the sweep to void the short authorization",
    )
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "AUTHORIZATION_EXPIRED"):
        billing.capture(short.authorization_id)
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "AUTHORIZATION_EXPIRED"):
        billing.void(short.authorization_id)

    # The default timeout (31 days) outlives the longest message TTL.
    billing.clock.advance(timedelta(days=30))
    assert billing.capture(default.authorization_id).amount.amount_micros == 100_000
    acct = billing.account(wallet)
    assert acct.debits_posted.amount_micros == 100_000
    assert acct.debits_pending.amount_micros == 0
    assert acct.available.amount_micros == 900_000


def test_rate_card_replay_keeps_one_version(billing: Billing) -> None:
    req = pb.SetRateCardRequest(
        request_id="card-once",
        currency_code="EUR",
        entries=[pb.RateCardEntry(category=MARKETING, recipient_country="DE", price=eur(5))],
    )
    req.effective_time.FromDatetime(billing.clock.now() + timedelta(hours=1))
    first = billing.call(ADMIN, "SetRateCard", req)
    billing.clock.advance(timedelta(hours=2))  # the effective time now lies in the past
    assert billing.call(ADMIN, "SetRateCard", req) == first
    assert first.rate_card.version == 1
    latest = billing.call(ADMIN, "GetRateCard", pb.GetRateCardRequest(currency_code="EUR"))
    assert latest.rate_card.version == 1
