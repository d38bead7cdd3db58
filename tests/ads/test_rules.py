"""Pacing, eligibility filters and the interest rule, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

from ads_svc import store
from ads_svc.auction import BidKind
from ads_svc.eligibility import Candidate, NoFill, audience, eligible, matches_interests
from ads_svc.pacing import elapsed_fraction, serve_probability

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


def cand(campaign_id: str = "c", **kw: object) -> Candidate:
    base: dict[str, object] = {
        "campaign_id": campaign_id,
        "kind": BidKind.CPM,
        "bid_micros": 1_000_000,
        "interests": frozenset(),
        "cap_max_impressions": 0,
        "cap_period_days": 0,
        "daily_budget_micros": 1_000_000,
        "lifetime_budget_micros": 100_000_000,
        "spend_micros": 0,
        "spend_day": "",
        "spend_day_micros": 0,
        "start_time": LONG_AGO,
        "end_time": None,
        "unfunded_until": None,
        "impressions": 0,
        "clicks": 0,
    }
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def always() -> float:
    return 0.0


def test_pacing_serves_behind_the_line_and_stops_ahead_of_it() -> None:
    budget = 4_800_000
    slack = budget // 48  # 100,000
    assert elapsed_fraction(NOON, LONG_AGO, None) == Fraction(1, 2)
    assert serve_probability(budget, 2_000_000, NOON, LONG_AGO, None) == 1
    # On the line exactly: one slack of headroom left, served with certainty.
    assert serve_probability(budget, 2_400_000, NOON, LONG_AGO, None) == 1
    # Half a slack ahead: half the time.
    assert serve_probability(budget, 2_400_000 + slack // 2, NOON, LONG_AGO, None) == Fraction(1, 2)
    assert serve_probability(budget, 2_400_000 + slack, NOON, LONG_AGO, None) == 0


def test_pacing_day_starts_at_the_campaign_start() -> None:
    start = NOON - timedelta(hours=6)  # 06:00: 6 of 18 serving hours gone at noon
    assert elapsed_fraction(NOON, start, None) == Fraction(1, 3)
    end = NOON + timedelta(hours=6)  # 06:00-18:00: half gone
    assert elapsed_fraction(NOON, start, end) == Fraction(1, 2)


def test_interests_are_ignored_without_the_preference() -> None:
    who = audience(False, ["cycling"], ["cycling", "coffee"])
    assert who.interests == frozenset()
    targeted = cand(interests=frozenset({"cycling"}))
    assert not matches_interests(targeted, who)
    # The preference on: the person's chosen and on-device interests count.
    on = audience(True, ["cycling"], ["coffee"])
    assert matches_interests(targeted, on)
    assert matches_interests(cand(interests=frozenset({"coffee"})), on)
    assert not matches_interests(cand(interests=frozenset({"golf"})), on)
    # Campaigns without interests are for everyone.
    assert matches_interests(cand(), who)


def test_no_fill_reason_is_the_last_filter_that_removed_everyone() -> None:
    today = NOON.date().isoformat()
    nothing, reason = eligible([], audience(False, [], []), {}, NOON, always)
    assert (nothing, reason) == ([], NoFill.NO_MATCHING_CAMPAIGN)

    capped = cand("a", cap_max_impressions=2, cap_period_days=1)
    seen = {"a": [NOON - timedelta(hours=1), NOON - timedelta(hours=2)]}
    assert eligible([capped], audience(False, [], []), seen, NOON, always)[1] is (
        NoFill.FREQUENCY_CAPPED
    )
    # Impressions older than the period do not count.
    old = {"a": [NOON - timedelta(days=2), NOON - timedelta(days=3)]}
    assert eligible([capped], audience(False, [], []), old, NOON, always)[0] == [capped]

    spent = cand("b", spend_day=today, spend_day_micros=1_000_000)
    assert eligible([spent], audience(False, [], []), {}, NOON, always)[1] is (
        NoFill.BUDGET_EXHAUSTED
    )
    lifetime = cand("c", spend_micros=100_000_000 - 999)  # less than one 1,000-micro impression
    assert eligible([lifetime], audience(False, [], []), {}, NOON, always)[1] is (
        NoFill.BUDGET_EXHAUSTED
    )
    ahead = cand("d", spend_day=today, spend_day_micros=600_000)  # line at noon: 500,000
    assert eligible([ahead], audience(False, [], []), {}, NOON, always)[1] is NoFill.PACED
    unfunded = cand("e", unfunded_until=NOON + timedelta(seconds=30))
    assert eligible([unfunded], audience(False, [], []), {}, NOON, always)[1] is (
        NoFill.ADVERTISER_CANNOT_PAY
    )
    # Yesterday's spend does not count against today.
    fresh = cand("f", spend_day="2026-02-28", spend_day_micros=1_000_000)
    assert eligible([fresh], audience(False, [], []), {}, NOON, always)[0] == [fresh]


def test_candidate_rows_line_up_with_the_candidate_fields() -> None:
    # convert.candidate builds a Candidate from a row by position.
    names = [c.name for c in store.CANDIDATE_COLUMNS]
    assert names[:2] == ["id", "bid_type"] and Candidate._fields[:2] == ("campaign_id", "kind")
    assert names[2:] == list(Candidate._fields[2:])
