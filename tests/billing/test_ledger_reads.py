"""Transfers listed with pagination and a time filter; statements grouped and adding up."""

from __future__ import annotations

from datetime import timedelta

from bizmsg.billing.v1 import billing_pb2 as pb
from tests.billing.support import (
    ADMIN,
    ADS,
    AUTHENTICATION,
    MARKETING,
    Billing,
    assert_ledger_consistent,
    eur,
    rid,
)


def test_list_transfers_pages_and_filters_by_time(billing: Billing) -> None:
    w = billing.wallet("pages")
    billing.top_up(w.account_id, 10_000_000)
    billing.rate_card({(MARKETING, "DE"): 1_000})
    t0 = billing.clock.now()
    for _ in range(7):
        billing.clock.advance(timedelta(hours=1))
        billing.capture(billing.authorize("pages").authorization_id)

    seen: list[pb.Transfer] = []
    token = ""
    while True:
        req = pb.ListTransfersRequest(account_id=w.account_id, page_size=4, page_token=token)
        page = billing.call("business:pages", "ListTransfers", req)
        assert len(page.transfers) <= 4
        seen.extend(page.transfers)
        token = page.next_page_token
        if not token:
            break
    # The top-up, then a pending and a post_pending transfer per message.
    assert len(seen) == 1 + 7 * 2
    assert len({t.transfer_id for t in seen}) == len(seen)
    times = [(t.create_time.ToDatetime(), t.transfer_id) for t in seen]
    assert times == sorted(times)
    assert seen[0].kind == pb.TRANSFER_KIND_TOP_UP
    posts = [t for t in seen if t.post_pending]
    assert all(t.pending_id for t in posts) and len(posts) == 7

    window = pb.ListTransfersRequest(account_id=w.account_id, page_size=100)
    window.start_time.FromDatetime(t0 + timedelta(hours=2))
    window.end_time.FromDatetime(t0 + timedelta(hours=4))
    inside = billing.call(ADMIN, "ListTransfers", window).transfers
    assert len(inside) == 4  # messages 2 and 3, two transfers each


def test_statement_groups_lines_and_adds_up(billing: Billing) -> None:
    w = billing.wallet("stmt")
    billing.top_up(w.account_id, 5_000_000)
    billing.rate_card(
        {(MARKETING, "DE"): 10_000, (MARKETING, "FR"): 20_000, (AUTHENTICATION, "DE"): 3_000}
    )
    billing.clock.advance(timedelta(days=1))
    start = billing.clock.now()
    for category, country in [
        (MARKETING, "DE"),
        (MARKETING, "DE"),
        (MARKETING, "FR"),
        (AUTHENTICATION, "DE"),
    ]:
        billing.capture(
            billing.authorize("stmt", category=category, country=country).authorization_id
        )
    billing.void(billing.authorize("stmt").authorization_id)  # voided: not in the statement
    billing.authorize("stmt")  # still pending: not posted either

    req = pb.GetStatementRequest(account_id=w.account_id)
    req.start_time.FromDatetime(start)
    s = billing.call("business:stmt", "GetStatement", req).statement
    assert s.opening_balance.amount_micros == 5_000_000
    lines = {(ln.category, ln.recipient_country): ln for ln in s.lines}
    assert lines[(MARKETING, "DE")].count == 2
    assert lines[(MARKETING, "DE")].debits.amount_micros == 20_000
    assert lines[(MARKETING, "FR")].debits.amount_micros == 20_000
    assert lines[(AUTHENTICATION, "DE")].debits.amount_micros == 3_000
    assert s.total_debits.amount_micros == sum(ln.debits.amount_micros for ln in s.lines)
    assert s.closing_balance.amount_micros == 5_000_000 - 43_000
    acct = billing.account(w.account_id)
    assert s.closing_balance.amount_micros == (
        acct.credits_posted.amount_micros - acct.debits_posted.amount_micros
    )
    # The whole history: opening 0, and the top-up as its own line.
    full = billing.call(ADMIN, "GetStatement", pb.GetStatementRequest(account_id=w.account_id))
    assert full.statement.opening_balance.amount_micros == 0
    assert full.statement.closing_balance == s.closing_balance
    assert full.statement.total_credits.amount_micros == 5_000_000


def test_ad_events_post_to_platform_revenue(billing: Billing) -> None:
    adv = billing.advertiser("brand")
    billing.top_up(adv.account_id, 10_000)
    for kind, micros in [(pb.AD_EVENT_KIND_IMPRESSION, 2), (pb.AD_EVENT_KIND_CLICK, 300)]:
        req = pb.ChargeAdEventRequest(
            request_id=rid("evt"),
            campaign_id="camp-1",
            account_id=adv.account_id,
            kind=kind,
            amount=eur(micros),
        )
        resp = billing.call(ADS, "ChargeAdEvent", req)
        assert resp.amount.amount_micros == micros and resp.transfer_id
    seen_by_ads = billing.call(ADS, "GetAccount", pb.GetAccountRequest(account_id=adv.account_id))
    assert seen_by_ads.account.available.amount_micros == 10_000 - 302
    revenue = billing.call(ADMIN, "ListAccounts", pb.ListAccountsRequest(owner="platform"))
    rev = next(a for a in revenue.accounts if a.kind == pb.ACCOUNT_KIND_PLATFORM_REVENUE)
    assert rev.credits_posted.amount_micros == 302
    s = billing.call(ADS, "GetStatement", pb.GetStatementRequest(account_id=adv.account_id))
    kinds = {
        ln.ad_event_kind: ln for ln in s.statement.lines if ln.kind == pb.TRANSFER_KIND_AD_CHARGE
    }
    assert kinds[pb.AD_EVENT_KIND_CLICK].debits.amount_micros == 300
    assert kinds[pb.AD_EVENT_KIND_IMPRESSION].count == 1
    assert_ledger_consistent(billing.all_accounts(["advertiser:brand"]))
