"""The auction on hand-made cases: winner, second price, reserve, ties."""

from __future__ import annotations

import random
from fractions import Fraction

from ads_svc.auction import Bidder, BidKind, Price, ctr_estimate, price, rank, score

CPM = BidKind.CPM
CPC = BidKind.CPC
RESERVE = 100_000  # 0.10 per 1,000 impressions


def test_highest_cpm_wins_and_pays_the_runner_up_bid() -> None:
    bidders = [
        Bidder("a", CPM, 2_000_000),
        Bidder("b", CPM, 5_000_000),
        Bidder("c", CPM, 3_000_000),
    ]
    ranked = rank(bidders, RESERVE, seed="s")
    assert [r.bidder.campaign_id for r in ranked] == ["b", "c", "a"]
    # b pays c's 3.00 CPM: 3,000 micros for this one impression.
    assert price(ranked, 0, RESERVE) == Price(impression_micros=3000, click_micros=0)
    # Were b gone, c would pay a's bid.
    assert price(ranked, 1, RESERVE) == Price(impression_micros=2000, click_micros=0)


def test_a_lone_bidder_pays_the_reserve_not_its_bid() -> None:
    ranked = rank([Bidder("a", CPM, 9_000_000)], RESERVE, seed="s")
    assert price(ranked, 0, RESERVE) == Price(impression_micros=100, click_micros=0)


def test_the_reserve_is_a_floor_under_a_low_runner_up() -> None:
    ranked = rank([Bidder("a", CPM, 1_000_000), Bidder("b", CPM, 100_000)], 500_000, "s")
    # b is below the reserve and out; a pays the reserve, 500,000 / 1000 = 500 micros.
    assert [r.bidder.campaign_id for r in ranked] == ["a"]
    assert price(ranked, 0, 500_000).impression_micros == 500


def test_bids_below_the_reserve_never_win() -> None:
    assert rank([Bidder("a", CPM, 99_000), Bidder("b", CPC, 1_000)], RESERVE, "s") == []


def test_cpc_is_ranked_by_bid_times_smoothed_ctr() -> None:
    # A new CPC campaign: ctr = (0 + 1) / (0 + 50) = 2 %; 0.20 per click -> 4.00 per mille.
    new = Bidder("new", CPC, 200_000)
    assert ctr_estimate(0, 0) == Fraction(1, 50)
    assert score(new) == 4_000_000
    # A proven one: 99 clicks in 950 impressions -> ctr = 100 / 1000 = 10 % -> 0.10 * 10 % * 1000.
    proven = Bidder("proven", CPC, 100_000, impressions=950, clicks=99)
    assert score(proven) == 10_000_000
    cpm = Bidder("cpm", CPM, 6_000_000)
    ranked = rank([new, proven, cpm], RESERVE, "s")
    assert [r.bidder.campaign_id for r in ranked] == ["proven", "cpm", "new"]
    # proven keeps its rank paying 6.00 per mille: 6,000,000 / (1000 * 10 %) = 60,000 per click.
    assert price(ranked, 0, RESERVE) == Price(impression_micros=0, click_micros=60_000)
    # cpm pays new's expected 4.00 per mille.
    assert price(ranked, 1, RESERVE) == Price(impression_micros=4000, click_micros=0)


def test_cpc_price_never_exceeds_the_bid() -> None:
    a = Bidder("a", CPC, 333_333)
    b = Bidder("b", CPC, 333_333)
    ranked = rank([a, b], RESERVE, "s")
    assert price(ranked, 0, RESERVE).click_micros == 333_333


def test_a_tie_pays_its_own_bid_and_is_broken_fairly_by_the_seed() -> None:
    a = Bidder("a", CPM, 2_000_000)
    b = Bidder("b", CPM, 2_000_000)
    winners = set()
    for i in range(40):
        ranked = rank([a, b], RESERVE, seed=f"serve-{i}")
        # Equal scores: the runner-up's score is the winner's own bid.
        assert price(ranked, 0, RESERVE).impression_micros == 2000
        winners.add(ranked[0].bidder.campaign_id)
        # The same seed gives the same order (a retried request is ranked alike).
        again = rank([b, a], RESERVE, seed=f"serve-{i}")
        assert again[0].bidder.campaign_id == ranked[0].bidder.campaign_id
    assert winners == {"a", "b"}


def test_rank_is_exact_where_floats_cannot_tell_scores_apart() -> None:
    # Scores near 10**7 that differ by about 10**-10: one double, two different rationals.
    hi = Bidder("hi", CPC, 10**12, impressions=10**17 - 50, clicks=10**9 - 1)
    lo = Bidder("lo", CPC, 10**12, impressions=10**17 - 49, clicks=10**9 - 1)
    assert float(score(hi)) == float(score(lo)) and score(hi) > score(lo)
    for i in range(20):
        ranked = rank([lo, hi], RESERVE, seed=f"serve-{i}")
        assert [r.bidder.campaign_id for r in ranked] == ["hi", "lo"]


def test_an_exact_tie_across_bid_types_rotates_by_seed() -> None:
    # A new CPC campaign bidding 0.10 a click is worth 0.10 * 2 % * 1000 = 2.00 per mille.
    cpc = Bidder("cpc", CPC, 100_000)
    cpm = Bidder("cpm", CPM, 2_000_000)
    assert score(cpc) == score(cpm)
    firsts = {rank([cpc, cpm], RESERVE, seed=f"s{i}")[0].bidder.campaign_id for i in range(40)}
    assert firsts == {"cpc", "cpm"}


def test_rank_keeps_exactly_the_bidders_at_the_reserve_best_first() -> None:
    rng = random.Random(7)
    bidders = [
        Bidder(
            f"c{i}",
            rng.choice([CPM, CPC]),
            rng.randrange(1, 3_000_000),
            impressions=rng.randrange(0, 10_000),
            clicks=rng.randrange(0, 300),
        )
        for i in range(300)
    ]
    ranked = rank(bidders, RESERVE, seed="s")
    assert {r.bidder.campaign_id for r in ranked} == {
        b.campaign_id for b in bidders if score(b) >= RESERVE
    }
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
