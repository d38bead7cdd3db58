"""Rate cards in memory. A version never changes once written, so a process may keep the
versions it has read; what it must not miss is a version added since, here or on another
replica. Versions of a currency are numbered 1, 2, 3, ... and version n+1 can only be
written after version n committed (the unique (currency, version) index makes a concurrent
writer of the same number fail), so "the newest version number is still the one I loaded"
proves the cached set complete. That number is checked on every charge, inside the UPDATE
that reserves the money (postings.try_reserve), and on every quote, by one indexed read.

A set loaded at time t0 holds the version in force at t0 and every version effective after
t0, which is all that can be in force at any time from t0 on (rate cards may not start in
the past). Asked about an earlier time (a clock moved back), it is loaded again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_svc.models import RateCardRow, RatePriceRow
from bizmsg.kit.storage import UTCDateTime

_C = cast(Table, RateCardRow.__table__)
_P = cast(Table, RatePriceRow.__table__)
_LATEST = select(func.max(_C.c.version)).where(_C.c.currency == bindparam("currency"))
_AT = bindparam("at", type_=UTCDateTime)
_IN_FORCE = (
    select(_C.c.id, _C.c.version, _C.c.effective_time)
    .where(_C.c.currency == bindparam("currency"), _C.c.effective_time <= _AT)
    .order_by(_C.c.effective_time.desc(), _C.c.version.desc())
    .limit(1)
)
_LATER = select(_C.c.id, _C.c.version, _C.c.effective_time).where(
    _C.c.currency == bindparam("currency"), _C.c.effective_time > _AT
)
_PRICES = select(_P.c.rate_card_id, _P.c.category, _P.c.recipient_country, _P.c.price).where(
    _P.c.rate_card_id.in_(bindparam("ids", expanding=True))
)


@dataclass(frozen=True)
class Version:
    version: int
    effective_time: datetime
    # (category, recipient_country) -> micros; country "" prices every other country.
    prices: Mapping[tuple[int, str], int]


@dataclass(frozen=True)
class CardSet:
    currency: str
    latest: int  # the newest version number in the store when loaded; 0: none
    loaded_at: datetime
    versions: Sequence[Version]  # newest in force first: (effective_time, version) descending

    def in_force(self, at: datetime) -> Version | None:
        for v in self.versions:
            if v.effective_time <= at:
                return v
        return None

    def price(self, at: datetime, category: int, country: str) -> tuple[int, int] | None:
        """(price, version) the card in force at `at` gives, as store.price_at would."""
        v = self.in_force(at)
        if v is None:
            return None
        found = v.prices.get((category, country))
        if found is None:
            found = v.prices.get((category, ""))
        return None if found is None else (found, v.version)


async def latest_version(conn: AsyncConnection, currency: str) -> int:
    return int((await conn.execute(_LATEST, {"currency": currency})).scalar() or 0)


async def _load(conn: AsyncConnection, currency: str, at: datetime) -> CardSet:
    # The newest number first: every version up to it is committed, so the reads that follow
    # see them all (a newer one they may also see only makes the next check reload).
    latest = await latest_version(conn, currency)
    params = {"currency": currency, "at": at}
    rows = list((await conn.execute(_IN_FORCE, params)).all())
    rows += (await conn.execute(_LATER, params)).all()
    prices: dict[str, dict[tuple[int, str], int]] = {r.id: {} for r in rows}
    if rows:
        for p in await conn.execute(_PRICES, {"ids": list(prices)}):
            prices[p.rate_card_id][(p.category, p.recipient_country)] = int(p.price)
    versions = sorted(
        (Version(int(r.version), r.effective_time, prices[r.id]) for r in rows),
        key=lambda v: (v.effective_time, v.version),
        reverse=True,
    )
    return CardSet(currency, latest, at, tuple(versions))


class RateCards:
    """The per-process cache, one CardSet per currency."""

    def __init__(self) -> None:
        self._sets: dict[str, CardSet] = {}

    async def get(self, conn: AsyncConnection, currency: str, at: datetime) -> CardSet:
        """The cached set, unchecked (the caller checks `latest`), loaded when missing."""
        s = self._sets.get(currency)
        if s is None or at < s.loaded_at:
            s = self._sets[currency] = await _load(conn, currency, at)
        return s

    async def checked(self, conn: AsyncConnection, currency: str, at: datetime) -> CardSet:
        """The set, proven current by one read of the newest version number."""
        s = await self.get(conn, currency, at)
        if await latest_version(conn, currency) != s.latest:
            s = self._sets[currency] = await _load(conn, currency, at)
        return s

    def forget(self, currency: str) -> None:
        self._sets.pop(currency, None)
