"""Which matching campaigns may bid for one ad slot, and why none could.

Pure: the caller gathers the candidates (already matched on status, schedule, country
and language by the store), the person's recent impressions and the preference.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from ads_svc import pacing
from ads_svc.auction import BidKind, max_event_micros


class NoFill(enum.Enum):
    """Mirrors ads.v1.NoFillReason, in the order the filters run."""

    NO_MATCHING_CAMPAIGN = "NO_MATCHING_CAMPAIGN"
    FREQUENCY_CAPPED = "FREQUENCY_CAPPED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    PACED = "PACED"
    ADVERTISER_CANNOT_PAY = "ADVERTISER_CANNOT_PAY"
    BELOW_RESERVE = "BELOW_RESERVE"


class Candidate(NamedTuple):
    """One matching campaign as eligibility and the auction see it (a tuple: one serve
    builds hundreds of them)."""

    campaign_id: str
    kind: BidKind
    bid_micros: int
    interests: frozenset[str]
    cap_max_impressions: int
    cap_period_days: int
    daily_budget_micros: int
    lifetime_budget_micros: int
    spend_micros: int
    spend_day: str
    spend_day_micros: int
    start_time: datetime
    end_time: datetime | None
    unfunded_until: datetime | None
    impressions: int
    clicks: int


@dataclass(frozen=True)
class Audience:
    """What may be known about the person for this slot.

    interests is empty unless the person turned personalisation on: build it with
    `audience()` so that rule lives in one place.
    """

    personalised: bool
    interests: frozenset[str]


def audience(personalised: bool, chosen: Collection[str], on_device: Collection[str]) -> Audience:
    if not personalised:
        return Audience(False, frozenset())
    return Audience(True, frozenset(chosen) | frozenset(on_device))


def matches_interests(c: Candidate, who: Audience) -> bool:
    """A campaign without interests matches anyone; one with interests only a personalised
    person who shares at least one of them."""
    if not c.interests:
        return True
    return who.personalised and not c.interests.isdisjoint(who.interests)


def capped(c: Candidate, recent: Sequence[datetime], now: datetime) -> bool:
    """The person already saw max_impressions of the campaign within period_days."""
    if c.cap_max_impressions <= 0:
        return False
    since = now - timedelta(days=c.cap_period_days)
    return sum(1 for t in recent if t > since) >= c.cap_max_impressions


def has_budget(c: Candidate, today: str) -> bool:
    """Room for one more event in the lifetime budget, and today's budget not yet used up."""
    event = max_event_micros(c.kind, c.bid_micros)
    if c.spend_micros + event > c.lifetime_budget_micros:
        return False
    return c.spend_day != today or c.spend_day_micros < c.daily_budget_micros


def spent_today(c: Candidate, today: str) -> int:
    return c.spend_day_micros if c.spend_day == today else 0


def paced_in(c: Candidate, today: str, now: datetime, draw: Callable[[], float]) -> bool:
    """Pacing's coin for one campaign."""
    spent = spent_today(c, today)
    if spent == 0 and c.daily_budget_micros > 0:
        return True  # nothing spent today: at or behind the line, p = 1 (no coin needed)
    p = pacing.serve_probability(c.daily_budget_micros, spent, now, c.start_time, c.end_time)
    return draw() < p


class Filters:
    """The filters of one serve, in the order they run (NoFill lists them in that order).

    `first_failure` judges one candidate at a time, so a serve can stop once it has the
    bidders it needs; `eligible` (all candidates at once) gives the same answers.
    """

    STAGES = (
        NoFill.NO_MATCHING_CAMPAIGN,
        NoFill.FREQUENCY_CAPPED,
        NoFill.BUDGET_EXHAUSTED,
        NoFill.PACED,
        NoFill.ADVERTISER_CANNOT_PAY,
    )

    def __init__(
        self,
        who: Audience,
        recent: Mapping[str, Sequence[datetime]],
        now: datetime,
        draw: Callable[[], float],
    ) -> None:
        self.who = who
        self.recent = recent
        self.now = now
        self.today = pacing.day_key(now)
        self.draw = draw

    def first_failure(self, c: Candidate) -> int | None:
        """The index in STAGES of the first filter that removes `c`; None if it passes all.
        Pacing's coin is drawn only for a candidate that reaches it."""
        if not matches_interests(c, self.who):
            return 0
        if capped(c, self.recent.get(c.campaign_id, ()), self.now):
            return 1
        if not has_budget(c, self.today):
            return 2
        if not paced_in(c, self.today, self.now, self.draw):
            return 3
        if c.unfunded_until is not None and c.unfunded_until > self.now:
            return 4
        return None


def reason_for(candidates_seen: bool, worst_failure: int) -> NoFill:
    """Why nothing passed: the last filter that removed everyone, i.e. the latest first
    failure of any candidate (NO_MATCHING_CAMPAIGN when there was no candidate at all)."""
    if not candidates_seen:
        return NoFill.NO_MATCHING_CAMPAIGN
    return Filters.STAGES[worst_failure]


def eligible(
    candidates: Sequence[Candidate],
    who: Audience,
    recent: Mapping[str, Sequence[datetime]],
    now: datetime,
    draw: Callable[[], float],
) -> tuple[list[Candidate], NoFill]:
    """The candidates that pass every filter, and the reason to give if there are none
    (BELOW_RESERVE when some pass: then only the auction's reserve can refuse them all).

    `draw` returns a uniform number in [0, 1) for pacing's coin.
    """
    filters = Filters(who, recent, now, draw)
    passed: list[Candidate] = []
    worst = 0
    for c in candidates:
        failure = filters.first_failure(c)
        if failure is None:
            passed.append(c)
        else:
            worst = max(worst, failure)
    if passed:
        return passed, NoFill.BELOW_RESERVE
    return [], reason_for(bool(candidates), worst)
