"""The page-at-a-time shortlist gives the bidders, prices and no-fill reasons that judging
every candidate at once (eligibility.eligible, auction.rank, auction.price) gives."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ads_svc import auction, shortlist
from ads_svc.auction import BidKind
from ads_svc.eligibility import Audience, Candidate, NoFill, audience, eligible
from ads_svc.shortlist import Page, Shortlist

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TODAY = NOW.date().isoformat()
RESERVE = 100_000
PERSON = audience(True, ["bikes"], [])


def hint(c: Candidate) -> float:
    """The store's estimate, computed the way its SQL does (in floats, step by step)."""
    if c.kind is BidKind.CPM:
        return float(c.bid_micros)
    return float(c.bid_micros) * ((c.clicks + 1.0) / (c.impressions + 50.0)) * 1000.0


def store_order(cands: Sequence[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (-hint(c), c.campaign_id))


def random_candidate(rng: random.Random, i: int) -> Candidate:
    cpc = rng.random() < 0.4
    # Few distinct bids, so runs of equal scores (within and across pages) are common.
    bid = rng.choice([40_000, 50_000, 60_000]) if cpc else rng.choice([1, 2, 3, 50]) * 100_000
    impressions = rng.choice([0, 0, 50, 150, 950])
    return Candidate(
        campaign_id=f"c{i:03d}",
        kind=BidKind.CPC if cpc else BidKind.CPM,
        bid_micros=bid,
        interests=frozenset({"bikes"} if rng.random() < 0.2 else {"golf"})
        if rng.random() < 0.3
        else frozenset(),
        cap_max_impressions=2 if rng.random() < 0.2 else 0,
        cap_period_days=1,
        daily_budget_micros=1_000_000,
        lifetime_budget_micros=10_000_000,
        spend_micros=rng.choice([0, 0, 0, 9_999_990]),
        spend_day=TODAY,
        spend_day_micros=rng.choice([0, 0, 100_000, 600_000]),  # 600,000: paced at noon
        start_time=NOW - timedelta(days=10),
        end_time=None,
        unfunded_until=NOW + timedelta(minutes=1) if rng.random() < 0.1 else None,
        impressions=impressions,
        clicks=rng.randint(0, impressions // 10),
    )


def expected(
    cands: Sequence[Candidate], recent: dict[str, list[datetime]], limit: int, seed: str
) -> tuple[list[tuple[str, auction.Price]], NoFill | None]:
    """Every bidder in order with the price it would pay, or the no-fill reason: the
    all-at-once way serving used before the shortlist."""
    considered = store_order(cands)[:limit]
    passed, reason = eligible(considered, PERSON, recent, NOW, lambda: 0.5)
    ranked = auction.rank(
        [
            auction.Bidder(c.campaign_id, c.kind, c.bid_micros, c.impressions, c.clicks)
            for c in passed
        ],
        RESERVE,
        seed=seed,
    )
    if not ranked:
        return [], reason
    return [
        (r.bidder.campaign_id, auction.price(ranked, i, RESERVE)) for i, r in enumerate(ranked)
    ], None


def walk(
    cands: Sequence[Candidate], recent: dict[str, list[datetime]], limit: int, seed: str
) -> tuple[list[tuple[str, auction.Price]], NoFill | None, int, int]:
    """The same through a Shortlist over an in-memory store; also how many pages it read and
    how many candidates the pages held."""
    ordered = store_order(cands)
    reads: list[int] = []

    async def read(at_most: float | None, size: int) -> Page:
        rows = [(c, hint(c)) for c in ordered if at_most is None or hint(c) <= at_most][:size]
        reads.append(len(rows))
        return Page(
            rows, {c.campaign_id: recent[c.campaign_id] for c, _ in rows if c.campaign_id in recent}
        )

    async def ask() -> Audience:
        return PERSON

    async def run() -> tuple[list[tuple[str, auction.Price]], NoFill | None]:
        first = await read(None, shortlist.first_page_limit(limit))
        s = Shortlist(
            first,
            read,
            ask,
            limit=limit,
            reserve_micros=RESERVE,
            seed=seed,
            now=NOW,
            draw=lambda: 0.5,
        )
        out = []
        position = 0
        current = await s.bidder(0)
        while current is not None:
            after = await s.bidder(position + 1)
            pair = [current.ranked] + ([after.ranked] if after is not None else [])
            out.append((current.candidate.campaign_id, auction.price(pair, 0, RESERVE)))
            position += 1
            current = after
        return out, (None if out else await s.no_fill_reason())

    bidders, reason = asyncio.run(run())
    return bidders, reason, len(reads), sum(reads)


def test_the_shortlist_serves_exactly_what_ranking_everything_would() -> None:
    rng = random.Random(7)
    reasons = set()
    for trial in range(300):
        count = rng.choice([0, 1, 3, 15, 16, 17, 40, 120])
        cands = [random_candidate(rng, i) for i in range(count)]
        recent = {
            c.campaign_id: [NOW - timedelta(hours=1)] * rng.choice([1, 2])
            for c in cands
            if c.cap_max_impressions and rng.random() < 0.7
        }
        limit = rng.choice([5, 30, 200])
        seed = f"p|{trial}"
        want_bidders, want_reason = expected(cands, recent, limit, seed)
        got_bidders, got_reason, _, _ = walk(cands, recent, limit, seed)
        assert got_bidders == want_bidders, trial
        assert got_reason == want_reason, trial
        reasons.add(want_reason)
    # The trials reached winners and several kinds of no-fill.
    assert None in reasons and NoFill.NO_MATCHING_CAMPAIGN in reasons and len(reasons) >= 4


def test_a_serve_reads_one_small_page_when_its_first_bidders_are_eligible() -> None:
    cands = [
        random_candidate(random.Random(i), i)._replace(
            kind=BidKind.CPM,
            bid_micros=1_000_000 + 1000 * (i % 89),
            interests=frozenset(),
            cap_max_impressions=0,
            spend_micros=0,
            spend_day_micros=0,
            unfunded_until=None,
        )
        for i in range(200)
    ]
    bidders, reason, pages, rows = walk(cands, {}, 200, "p|r")
    assert reason is None and len(bidders) == 200
    # Walking all 200 bidders needs several pages, but the winner and its price need one.
    first_two = walk(cands[:2], {}, 200, "p|r")
    assert first_two[2] == 1

    async def only_winner() -> int:
        ordered = store_order(cands)
        seen: list[int] = []

        async def read(at_most: float | None, size: int) -> Page:
            rows = [(c, hint(c)) for c in ordered if at_most is None or hint(c) <= at_most][:size]
            seen.append(len(rows))
            return Page(rows, {})

        async def ask() -> Audience:
            raise AssertionError("no campaign targets interests: consent is not asked")

        first = await read(None, shortlist.first_page_limit(200))
        s = Shortlist(
            first,
            read,
            ask,
            limit=200,
            reserve_micros=RESERVE,
            seed="p|r",
            now=NOW,
            draw=lambda: 0.5,
        )
        assert await s.bidder(0) is not None and await s.bidder(1) is not None
        return sum(seen)

    assert asyncio.run(only_winner()) == shortlist.FIRST_PAGE
    assert pages > 1 and rows > 200  # unsettled ends of pages are read again


def test_the_price_never_exceeds_the_winners_own_score() -> None:
    # Bidders read in several statements could come out of order if click counts moved in
    # between; the winner still pays at most its own bid.
    low = auction.Ranked(auction.Bidder("a", BidKind.CPM, 2_000_000))
    high = auction.Ranked(auction.Bidder("b", BidKind.CPM, 5_000_000))
    assert auction.price([low, high], 0, RESERVE) == auction.Price(2000, 0)
