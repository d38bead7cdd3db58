"""Pacing: spread a daily budget over the UTC day.

The spend line of a day is  L(t) = B * f(t),  f the fraction of the serving day gone by
(from midnight, or from the campaign's start if it starts that day, to the next
midnight or the campaign's end). A campaign is served with probability

    p = clamp((L(t) + S - spent) / S, 0, 1),   S = B / SLACK_DIVISOR (half an hour's share)

so it serves freely while at least S behind the line, is throttled smoothly as it
catches up, and stops at S ahead of it; by the end of the day the whole budget can be
spent. The hard daily limit is enforced separately, in the database (store.reserve).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from fractions import Fraction

SLACK_DIVISOR = 48


def day_key(now: datetime) -> str:
    return now.astimezone(UTC).date().isoformat()


def day_start(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)


def elapsed_fraction(now: datetime, start: datetime, end: datetime | None) -> Fraction:
    """The part of today's serving period that has passed."""
    begin = max(day_start(now), start)
    finish = day_start(now) + timedelta(days=1)
    if end is not None:
        finish = min(finish, end)
    total = (finish - begin).total_seconds()
    if total <= 0:
        return Fraction(1)
    done = (now - begin).total_seconds()
    return min(Fraction(1), max(Fraction(0), Fraction(done) / Fraction(total)))


def serve_probability(
    daily_budget_micros: int,
    spent_today_micros: int,
    now: datetime,
    start: datetime,
    end: datetime | None,
) -> Fraction:
    line = daily_budget_micros * elapsed_fraction(now, start, end)
    slack = Fraction(daily_budget_micros, SLACK_DIVISOR)
    if slack <= 0:
        return Fraction(0)
    p = (line + slack - spent_today_micros) / slack
    return min(Fraction(1), max(Fraction(0), p))
