"""Messaging limits of a business: per second, per business->person pair, unique people / 24 h.

Checked twice per send: once before consent and billing are asked (so an over-limit send
costs nothing), and again inside the store transaction with the sender's row locked, where
the counters are also moved, so the limits hold exactly under concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.common.v1 import common_pb2
from bizmsg.kit.errors import ResourceExhausted
from delivery_svc import store
from delivery_svc.policy import UNIQUE_PEOPLE_PERIOD, Limits, minute_window, second_window


@dataclass(frozen=True)
class LimitSettings:
    # Messages a business may send one person per minute (the pair limit).
    pair_per_minute: int = 10


async def load(session: AsyncSession, business_id: str) -> Limits:
    row = await store.get_limits(session, business_id)
    return Limits() if row is None else Limits(row.messages_per_second, row.tier)


def _keys(business_id: str, person_id: str, now: datetime) -> tuple[str, int, str, int]:
    ts = now.timestamp()
    return (
        f"mps:{business_id}",
        second_window(ts),
        f"pair:{business_id}:{person_id}",
        minute_window(ts),
    )


async def check(
    session: AsyncSession,
    settings: LimitSettings,
    business_id: str,
    person_id: str,
    window_kind: int,
    now: datetime,
) -> None:
    """Raises RESOURCE_EXHAUSTED (QuotaFailure + RetryInfo) when this message would pass a limit."""
    limits = await load(session, business_id)
    mps_key, second, pair_key, minute = _keys(business_id, person_id, now)
    ts = now.timestamp()
    if await store.counter(session, mps_key, second) >= limits.messages_per_second:
        raise ResourceExhausted(
            "RATE_LIMITED",
            f"business {business_id} may send {limits.messages_per_second} messages per second",
            quota_violations=[
                (f"business:{business_id}", f"{limits.messages_per_second} messages per second")
            ],
            retry_after=max(0.001, second + 1 - ts),
        )
    if await store.counter(session, pair_key, minute) >= settings.pair_per_minute:
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
            retry_after=max(0.001, minute + 60 - ts),
        )
    if window_kind != common_pb2.WINDOW_KIND_NONE or limits.unique_people is None:
        return
    since = now - UNIQUE_PEOPLE_PERIOD
    started = await store.conversation_start(session, business_id, person_id)
    if started is not None and started > since:
        return  # already counted in this period
    count, oldest = await store.recent_conversations(session, business_id, since)
    if count >= limits.unique_people:
        wait = (oldest + UNIQUE_PEOPLE_PERIOD - now).total_seconds() if oldest else 1.0
        raise ResourceExhausted(
            "UNIQUE_PEOPLE_LIMITED",
            f"business {business_id} may start conversations with {limits.unique_people} "
            "people per 24 hours outside a window",
            quota_violations=[
                (f"business:{business_id}", f"{limits.unique_people} unique people per 24 hours")
            ],
            retry_after=max(0.001, wait),
        )


async def record(
    session: AsyncSession, business_id: str, person_id: str, window_kind: int, now: datetime
) -> None:
    """Counts an accepted message (after `check` passed in the same transaction)."""
    mps_key, second, pair_key, minute = _keys(business_id, person_id, now)
    await store.bump_counter(session, mps_key, second)
    await store.bump_counter(session, pair_key, minute)
    if window_kind == common_pb2.WINDOW_KIND_NONE:
        started = await store.conversation_start(session, business_id, person_id)
        if started is None or started <= now - UNIQUE_PEOPLE_PERIOD:
            await store.put_conversation_start(session, business_id, person_id, now)
