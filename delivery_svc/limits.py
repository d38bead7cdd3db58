"""Messaging limits of a business: per second, per business->person pair, unique people / 24 h.

Read once, in the read transaction before consent and billing are asked (`precheck`, so an
over-limit send costs nothing), with the recipient's devices (store.RecipientReader,
one statement). Counted exactly in the store transaction, with the sender's row locked
(`count`): the counters are bumped with RETURNING and a count past its limit refuses the send,
rolling the bump back with it (in a group commit of several sends, the pair's counter is
bumped with the batch's rows just before the commit and refused there; the batch then runs
again send by send). The configured limits are those read at arrival; only the counters must
be exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from bizmsg.common.v1 import common_pb2
from bizmsg.kit.errors import ResourceExhausted
from delivery_svc import store
from delivery_svc.policy import (
    MAX_MESSAGES_PER_SECOND,
    UNIQUE_PEOPLE_PERIOD,
    Limits,
    hour_window,
    minute_window,
    second_window,
)


@dataclass(frozen=True)
class LimitSettings:
    # Messages a business may send one person per minute (the pair limit).
    pair_per_minute: int = 10
    # The most messages per second admin may allow one business (UpdateMessagingLimits).
    max_messages_per_second: int = MAX_MESSAGES_PER_SECOND


async def load(conn: AsyncConnection, business_id: str) -> Limits:
    row = await store.get_limits(conn, business_id)
    return Limits() if row is None else Limits(row.messages_per_second, row.tier)


def configured(state: store.LimitState) -> Limits:
    if state.messages_per_second is None or state.tier is None:
        return Limits()
    return Limits(state.messages_per_second, state.tier)


def counters(
    business_id: str, person_id: str, now: datetime
) -> tuple[tuple[str, int], tuple[str, int]]:
    """(per-second key, its window), (per-pair key, its window) of a message arriving now."""
    ts = now.timestamp()
    return (
        (f"mps:{business_id}", second_window(ts)),
        (f"pair:{business_id}:{person_id}", minute_window(ts)),
    )


def _rate_errors(
    settings: LimitSettings,
    limits: Limits,
    business_id: str,
    person_id: str,
    now: datetime,
    second_count: int,
    pair_count: int,
) -> None:
    """Raises when a counter (including this message) passes its limit."""
    if second_count > limits.messages_per_second:
        ts = now.timestamp()
        raise ResourceExhausted(
            "RATE_LIMITED",
            f"business {business_id} may send {limits.messages_per_second} messages per second",
            quota_violations=[
                (f"business:{business_id}", f"{limits.messages_per_second} messages per second")
            ],
            retry_after=max(0.001, second_window(ts) + 1 - ts),
        )
    if pair_count > settings.pair_per_minute:
        ts = now.timestamp()
        raise ResourceExhausted(
            "PAIR_RATE_LIMITED",
            f"business {business_id} may send {settings.pair_per_minute} messages per minute "
            "to one person",
            quota_violations=[
                (
                    f"business:{business_id}->user:{person_id}",
                    f"{settings.pair_per_minute} messages per minute",
                )
            ],
            retry_after=max(0.001, minute_window(ts) + 60 - ts),
        )


def precheck(
    settings: LimitSettings,
    state: store.LimitState,
    business_id: str,
    person_id: str,
    now: datetime,
) -> None:
    """Raises RESOURCE_EXHAUSTED (QuotaFailure + RetryInfo) when this message would pass the
    per-second or per-pair limit as the counters stood when it arrived."""
    _rate_errors(
        settings,
        configured(state),
        business_id,
        person_id,
        now,
        state.second_count + 1,
        state.pair_count + 1,
    )


async def count(
    conn: AsyncConnection,
    settings: LimitSettings,
    state: store.LimitState,
    business_id: str,
    person_id: str,
    window_kind: int,
    now: datetime,
) -> None:
    """Counts an accepted message, or raises (and the caller's rollback uncounts it). Runs in
    the store transaction with the sender's row locked, so concurrent sends count exactly."""
    limits = configured(state)
    keys = counters(business_id, person_id, now)
    counts = await store.bump_counters(conn, keys, settings.pair_per_minute)
    (second_key, _), (pair_key, _) = keys
    # A pair count not returned is checked before the commit (store.bump_counters).
    _rate_errors(
        settings, limits, business_id, person_id, now, counts[second_key], counts.get(pair_key, 0)
    )
    if window_kind != common_pb2.WINDOW_KIND_NONE:
        return
    since = now - UNIQUE_PEOPLE_PERIOD
    if state.conversation_start is not None and state.conversation_start > since:
        return  # counted in this period already (a start only ever moves forward)
    if not await store.start_conversation(conn, business_id, person_id, now, since):
        return
    # Counted whatever the tier: a tier set later judges the day so far.
    await store.count_conversation(conn, business_id, hour_window(now.timestamp()))
    limit = limits.unique_people
    if limit is None:
        return
    if await store.people_since(conn, business_id, since, exact_above=limit) > limit:
        oldest = await store.oldest_start(conn, business_id, since)
        wait = (oldest + UNIQUE_PEOPLE_PERIOD - now).total_seconds() if oldest else 1.0
        raise ResourceExhausted(
            "UNIQUE_PEOPLE_LIMITED",
            f"business {business_id} may start conversations with {limit} "
            "people per 24 hours outside a window",
            quota_violations=[(f"business:{business_id}", f"{limit} unique people per 24 hours")],
            retry_after=max(0.001, wait),
        )
