"""ServeAd and RecordClick against running consent and billing services."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc

from bizmsg.ads.v1 import ads_pb2 as pb
from tests.ads.support import ADMIN, Stack, bad_fields, eur, fails, rid

LATE = datetime(2026, 1, 1, 23, 50, tzinfo=UTC)  # pacing's line is past the daily budget
YESTERDAY = datetime(2025, 12, 31, tzinfo=UTC)


def test_the_best_bid_wins_pays_second_price_and_is_charged_in_billing(stack: Stack) -> None:
    a, b = stack.wallet("adv1", 1_000_000), stack.wallet("adv2", 1_000_000)
    high = stack.create("adv1", a, bid=eur(5_000_000))
    stack.create("adv2", b, bid=eur(3_000_000))
    stack.clock.set(LATE)
    r = stack.serve("alice")
    assert r.ad.campaign_id == high.campaign_id
    assert r.ad.business_id == "acme" and r.ad.creative.headline == "Bikes on sale"
    # Second price: 3.00 per 1,000 -> 3,000 micros for this impression.
    assert r.ad.price == eur(3000)
    assert stack.debited(a) == 3000 and stack.debited(b) == 0
    assert stack.get(high.campaign_id).spend == eur(3000)
    # A retry with the same request_id returns the same ad and charges nothing more.
    again = stack.serve("alice", request_id=rid())
    assert again.ad.impression_id != r.ad.impression_id
    retry_id = rid()
    first = stack.serve("bob", request_id=retry_id)
    assert stack.serve("bob", request_id=retry_id) == first
    assert stack.debited(a) == 9000


def test_no_fill_when_nothing_matches_country_or_language(stack: Stack) -> None:
    stack.create("adv1", stack.wallet("adv1", 1_000_000))
    stack.clock.set(LATE)
    for kw in ({"country": "FR"}, {"language": "en"}):
        r = stack.serve("alice", **kw)
        assert r.no_fill.reason == pb.NO_FILL_REASON_NO_MATCHING_CAMPAIGN


def test_interests_are_used_only_with_the_persons_preference(stack: Stack) -> None:
    acc = stack.wallet("adv1", 1_000_000)
    cycling = stack.create(
        "adv1", acc, targeting=pb.Targeting(countries=["DE"], interests=["cycling"])
    )
    stack.clock.set(LATE)
    # Off by default: the on-device interest is ignored, the targeted campaign never matches.
    r = stack.serve("alice", interests=["cycling"])
    assert r.no_fill.reason == pb.NO_FILL_REASON_NO_MATCHING_CAMPAIGN
    # Chosen in consent but personalisation off: still ignored.
    stack.personalise("alice", False, ["cycling"])
    assert stack.serve("alice").no_fill.reason == pb.NO_FILL_REASON_NO_MATCHING_CAMPAIGN
    stack.personalise("alice", True, ["cycling"])
    assert stack.serve("alice").ad.campaign_id == cycling.campaign_id
    # Turned off again: ignored again, for the chosen and the on-device interests alike.
    stack.personalise("alice", False)
    r = stack.serve("alice", interests=["cycling"])
    assert r.no_fill.reason == pb.NO_FILL_REASON_NO_MATCHING_CAMPAIGN
    # Bob never turned it on: only his country and language count.
    assert stack.serve("bob", interests=["cycling"]).WhichOneof("result") == "no_fill"


def test_frequency_cap_holds_under_concurrent_serves(stack: Stack) -> None:
    acc = stack.wallet("adv1", 5_000_000)
    stack.create("adv1", acc, frequency_cap=pb.FrequencyCap(max_impressions=3, period_days=1))
    stack.clock.set(LATE)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: stack.serve("alice"), range(24)))
    served = [r for r in results if r.HasField("ad")]
    assert len(served) == 3
    assert {r.no_fill.reason for r in results if not r.HasField("ad")} == {
        pb.NO_FILL_REASON_FREQUENCY_CAPPED
    }
    assert stack.serve("bob").HasField("ad")  # the cap is per person
    stack.clock.advance(timedelta(days=1, seconds=1))
    assert stack.serve("alice").HasField("ad")


def test_lifetime_budget_is_never_passed_across_two_replicas(replicated: Stack) -> None:
    s = replicated
    acc = s.wallet("adv1", 5_000_000)
    # A lone bidder pays the reserve: 100 micros an impression; room for exactly 10.
    c = s.create(
        "adv1",
        acc,
        start=YESTERDAY,
        bid=eur(100_000),
        daily_budget=eur(1_000_000),
        lifetime_budget=eur(1000),
    )
    s.clock.set(LATE)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: s.serve(f"p{i}", replica=i), range(30)))
    assert sum(r.HasField("ad") for r in results) == 10
    assert {r.no_fill.reason for r in results if not r.HasField("ad")} == {
        pb.NO_FILL_REASON_BUDGET_EXHAUSTED
    }
    assert s.get(c.campaign_id).spend == eur(1000)
    assert s.debited(acc) == 1000


def test_daily_budget_is_passed_by_at_most_one_event(replicated: Stack) -> None:
    s = replicated
    acc = s.wallet("adv1", 5_000_000)
    c = s.create(
        "adv1",
        acc,
        start=YESTERDAY,
        bid=eur(100_000),
        daily_budget=eur(550),
        lifetime_budget=eur(1_000_000),
    )
    s.clock.set(LATE)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: s.serve(f"p{i}", replica=i), range(20)))
    # 100 micros each: while today's spend is below 550 one more is allowed, so 600.
    assert sum(r.HasField("ad") for r in results) == 6
    assert s.get(c.campaign_id).spend == eur(600)
    # The next day starts from zero.
    s.clock.advance(timedelta(hours=23, minutes=50))
    assert s.serve("late").HasField("ad")


def test_pacing_spreads_the_daily_budget_over_a_simulated_day(stack: Stack) -> None:
    acc = stack.wallet("adv1", 5_000_000)
    budget = 12_000  # 120 impressions at the 100-micro reserve price: 5 an hour
    c = stack.create("adv1", acc, daily_budget=eur(budget), lifetime_budget=eur(1_000_000))
    slack = budget // 48
    day = stack.clock.now()
    spent_by_hour = []
    for hour in range(1, 25):
        stack.clock.set(day + timedelta(hours=hour) - timedelta(seconds=1))
        for i in range(8):  # more demand than the line allows
            stack.serve(f"h{hour}-{i}")
        spent = stack.get(c.campaign_id).spend.amount_micros
        spent_by_hour.append(spent)
        line = budget * (hour * 3600 - 1) // 86400
        assert spent <= line + slack + 100, (hour, spent, line)
    # Steady through the day rather than all at once, and most of the budget used by midnight.
    assert spent_by_hour[0] <= 1000
    assert spent_by_hour[11] <= budget // 2 + slack + 100
    assert spent_by_hour[-1] >= budget * 9 // 10


def test_cpc_click_charges_once_and_opens_a_chat_with_a_referral(stack: Stack) -> None:
    acc = stack.wallet("adv1", 5_000_000)
    c = stack.create("adv1", acc, bid_type=pb.BID_TYPE_CPC, bid=eur(200_000))
    stack.clock.set(LATE)
    ad = stack.serve("alice").ad
    # CPC: the impression is free; a lone bidder's click costs the reserve over its CTR:
    # 100,000 / (1000 * 2 %) = 5,000 micros.
    assert ad.price == eur(0) and ad.click_price == eur(5000)
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_IMPRESSION_VIEWER"):
        stack.click("bob", ad.impression_id)
    click = stack.click("alice", ad.impression_id)
    assert click.price == eur(5000)
    assert click.chat_link == f"bizmsg://chat/acme?referral={click.click_id}"
    assert click.referral.click_id == click.click_id
    assert click.referral.campaign_id == c.campaign_id
    again = stack.click("alice", ad.impression_id)  # a second tap: the same click, no charge
    assert again.click_id == click.click_id
    assert stack.debited(acc) == 5000
    assert stack.get(c.campaign_id).spend == eur(5000)
    got = stack.call(
        "service:consent", "GetClick", pb.GetClickRequest(click_id=click.click_id)
    ).click
    assert got.person_id == "alice" and got.business_id == "acme"
    with fails(grpc.StatusCode.PERMISSION_DENIED):
        stack.call("advertiser:adv1", "GetClick", pb.GetClickRequest(click_id=click.click_id))
    with fails(grpc.StatusCode.NOT_FOUND, "IMPRESSION_NOT_FOUND"):
        stack.click("alice", "no-such-impression")
    stats = stack.stats(c.campaign_id)
    assert [(d.impressions, d.clicks) for d in stats.days] == [(1, 1)]
    assert stats.total.spend == eur(5000) and stats.total.click_through_rate == 1.0


def test_an_advertiser_who_cannot_pay_gives_way_to_the_next_bidder(stack: Stack) -> None:
    broke = stack.wallet("adv1", 0)
    funded = stack.wallet("adv2", 1_000_000)
    stack.create("adv1", broke, bid=eur(9_000_000))
    stack.clock.set(LATE)
    r = stack.serve("alice")
    assert r.no_fill.reason == pb.NO_FILL_REASON_ADVERTISER_CANNOT_PAY
    second = stack.create("adv2", funded, start=YESTERDAY, bid=eur(1_000_000))
    r = stack.serve("bob")
    assert r.ad.campaign_id == second.campaign_id
    assert stack.debited(funded) == 100 and stack.debited(broke) == 0


def test_stats_are_per_day(stack: Stack) -> None:
    acc = stack.wallet("adv1", 1_000_000)
    c = stack.create("adv1", acc)
    stack.clock.set(LATE)
    ad = stack.serve("alice").ad
    stack.serve("bob")
    stack.click("alice", ad.impression_id)
    stack.clock.advance(timedelta(days=1))
    stack.serve("carol")
    stats = stack.stats(c.campaign_id)
    assert [(d.impressions, d.clicks) for d in stats.days] == [(2, 1), (1, 0)]
    assert [d.click_through_rate for d in stats.days] == [0.5, 0.0]
    assert stats.total.impressions == 3 and stats.total.spend == eur(300)
    assert stats.days[1].day_start_time.ToDatetime(UTC) == datetime(2026, 1, 2, tzinfo=UTC)


def test_serve_checks_its_input_and_its_caller(stack: Stack) -> None:
    req = pb.ServeAdRequest(
        request_id=rid(),
        person_id="alice",
        placement=pb.PLACEMENT_UNSPECIFIED,
        context=pb.AdContext(country="germany", language="DE", interests=["Not OK"]),
    )
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        stack.call("user:alice", "ServeAd", req)
    assert bad_fields(got) == {
        "placement",
        "context.country",
        "context.language",
        "context.interests[0]",
    }
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_THE_PERSON"):
        stack.call(
            "user:bob",
            "ServeAd",
            pb.ServeAdRequest(
                request_id=rid(),
                person_id="alice",
                placement=pb.PLACEMENT_STATUS,
                context=pb.AdContext(country="DE"),
            ),
        )
    assert stack.call(ADMIN, "ListCampaigns", pb.ListCampaignsRequest()).campaigns == []


def test_a_refused_click_charge_leaves_the_click_free_and_stops_the_campaign(
    stack: Stack,
) -> None:
    broke = stack.wallet("adv1", 0)
    c = stack.create("adv1", broke, bid_type=pb.BID_TYPE_CPC, bid=eur(200_000))
    stack.clock.set(LATE)
    # A CPC impression costs nothing, so billing is first asked at the click.
    ad = stack.serve("alice").ad
    assert ad.price == eur(0) and ad.click_price == eur(5000)
    click = stack.click("alice", ad.impression_id)
    # Billing refused: the chat still opens, the click is free, the budget is given back.
    assert click.price == eur(0) and click.chat_link.startswith("bizmsg://chat/acme?")
    assert stack.get(c.campaign_id).spend == eur(0) and stack.debited(broke) == 0
    r = stack.serve("bob")
    assert r.no_fill.reason == pb.NO_FILL_REASON_ADVERTISER_CANNOT_PAY


def test_many_tied_campaigns_give_the_winner_and_price_of_ranking_them_all(stack: Stack) -> None:
    # 30 campaigns score exactly 2.00 per 1,000 (CPM 2.00, and CPC 0.10 at the 2 % prior):
    # a run of equal scores longer than the first page a serve reads. The winner and its
    # price must be those of ranking every matching campaign at once.
    from ads_svc import auction

    wallet = stack.wallet("adv1", 10**12)
    bidders: dict[str, auction.Bidder] = {}
    for bid_type, bid, n in (
        (pb.BID_TYPE_CPM, 2_000_000, 20),
        (pb.BID_TYPE_CPM, 1_000_000, 10),
        (pb.BID_TYPE_CPC, 100_000, 10),
    ):
        for _ in range(n):
            c = stack.create("adv1", wallet, bid_type=bid_type, bid=eur(bid))
            kind = auction.BidKind.CPM if bid_type == pb.BID_TYPE_CPM else auction.BidKind.CPC
            bidders[c.campaign_id] = auction.Bidder(c.campaign_id, kind, bid)
    stack.clock.set(LATE)
    for n in range(6):
        request_id = rid()
        ranked = auction.rank(list(bidders.values()), 100_000, seed=f"p{n}|{request_id}")
        want = auction.price(ranked, 0, 100_000)
        ad = stack.serve(f"p{n}", request_id=request_id).ad
        assert ad.campaign_id == ranked[0].bidder.campaign_id
        assert (ad.price.amount_micros, ad.click_price.amount_micros) == (
            want.impression_micros,
            want.click_micros,
        )
        won = bidders[ad.campaign_id]
        bidders[ad.campaign_id] = auction.Bidder(
            won.campaign_id, won.kind, won.bid_micros, won.impressions + 1, won.clicks
        )
