"""The auction: rank by expected value, price generalized-second-price with a reserve.

Pure functions on exact rationals (fractions.Fraction), no I/O and no floats near money.

The formula, for the eligible bidders of one ad slot:

    ctr_i   = (clicks_i + PRIOR_CLICKS) / (impressions_i + PRIOR_IMPRESSIONS)
              a smoothed click-through estimate: a 2 % prior worth 50 impressions, so a new
              campaign is neither favoured nor buried by its first few events.
    score_i = bid_i                      for CPM (the bid is already per 1,000 impressions)
              bid_i * ctr_i * 1000       for CPC (expected value of 1,000 impressions)
    Bidders with score_i < R (the reserve, in micros per 1,000 impressions) are out.
    Rank by score descending; equal scores are ordered by sha256(seed | campaign_id), a
    fair rotation that is the same for a given seed (the serve's request).

    The winner w, followed by runner-up r (score_r = 0 when there is none), must pay
    enough to keep its rank and no more:  T = max(score_r, R).
    CPM: impression price = ceil(T / 1000) micros; CPM bids are whole micros per
         impression, so this never exceeds bid_w / 1000.
    CPC: impression price = 0; click price = min(bid_w, ceil(T / (1000 * ctr_w))) micros.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

PRIOR_CLICKS = 1
PRIOR_IMPRESSIONS = 50
MILLE = 1000


class BidKind(enum.Enum):
    CPM = "CPM"
    CPC = "CPC"


@dataclass(frozen=True)
class Bidder:
    campaign_id: str
    kind: BidKind
    bid_micros: int
    impressions: int = 0
    clicks: int = 0


@dataclass(frozen=True)
class Ranked:
    bidder: Bidder

    @property
    def ctr(self) -> Fraction:
        return ctr_estimate(self.bidder.impressions, self.bidder.clicks)

    @property
    def score(self) -> Fraction:
        return score(self.bidder)


@dataclass(frozen=True)
class Price:
    """What the winner pays: now for the impression, later for a click (CPC)."""

    impression_micros: int
    click_micros: int


def ctr_estimate(impressions: int, clicks: int) -> Fraction:
    return Fraction(clicks + PRIOR_CLICKS, impressions + PRIOR_IMPRESSIONS)


def score(bidder: Bidder) -> Fraction:
    """Expected micros per 1,000 impressions."""
    if bidder.kind is BidKind.CPM:
        return Fraction(bidder.bid_micros)
    return bidder.bid_micros * ctr_estimate(bidder.impressions, bidder.clicks) * MILLE


def _tiebreak(seed: str, campaign_id: str) -> bytes:
    return hashlib.sha256(f"{seed}|{campaign_id}".encode()).digest()


def _reaches(b: Bidder, reserve_micros: int) -> bool:
    """score(b) >= reserve, in integers."""
    if b.kind is BidKind.CPM:
        return b.bid_micros >= reserve_micros
    return b.bid_micros * (b.clicks + PRIOR_CLICKS) * MILLE >= reserve_micros * (
        b.impressions + PRIOR_IMPRESSIONS
    )


def _rounded_score(b: Bidder) -> float:
    """score(b) correctly rounded to a float (int / int is), so a < b implies
    float(a) <= float(b): sorting by it is exact except among equal floats."""
    if b.kind is BidKind.CPM:
        return float(b.bid_micros)
    return b.bid_micros * (b.clicks + PRIOR_CLICKS) * MILLE / (b.impressions + PRIOR_IMPRESSIONS)


def rank(bidders: Sequence[Bidder], reserve_micros: int, seed: str) -> list[Ranked]:
    """The bidders that reach the reserve, best first.

    The order is that of (-score, tie-break) on exact rationals; it is computed on floats
    first (cheap) and made exact within each run of equal floats, the only place a float
    order can differ from the exact one.
    """
    scored = sorted(
        ((_rounded_score(b), b) for b in bidders if _reaches(b, reserve_micros)),
        key=lambda fb: fb[0],
        reverse=True,
    )
    out: list[Ranked] = []
    i = 0
    while i < len(scored):
        j = i + 1
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        run = [b for _, b in scored[i:j]]
        if len(run) > 1:
            run.sort(key=lambda b: (-score(b), _tiebreak(seed, b.campaign_id)))
        out.extend(Ranked(b) for b in run)
        i = j
    return out


def price(ranked: Sequence[Ranked], position: int, reserve_micros: int) -> Price:
    """The second price of the bidder at `position`, against the one ranked after it."""
    winner = ranked[position]
    runner_up = ranked[position + 1].score if position + 1 < len(ranked) else Fraction(0)
    # Ranked in order, the runner-up never scores above the winner; the min keeps the price
    # at most the winner's own score should a caller's order ever be off (a serve that read
    # its bidders in several statements while their click counts moved).
    threshold = max(min(runner_up, winner.score), Fraction(reserve_micros))
    if winner.bidder.kind is BidKind.CPM:
        return Price(impression_micros=math.ceil(threshold / MILLE), click_micros=0)
    click = math.ceil(threshold / (MILLE * winner.ctr))
    return Price(impression_micros=0, click_micros=max(1, min(winner.bidder.bid_micros, click)))


def max_event_micros(kind: BidKind, bid_micros: int) -> int:
    """The most one event can cost: what a budget must still hold to take part."""
    return bid_micros // MILLE if kind is BidKind.CPM else bid_micros
