"""Rate cards: versioned per currency, each version a whole card with an effective time.

A new version never overwrites an old one; pricing uses the version with the latest
effective time not after the moment priced (the higher version wins a tie).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc import store
from billing_svc.models import RateCardRow, RatePriceRow
from bizmsg.kit.errors import NotFound
from bizmsg.kit.ids import new_id


@dataclass(frozen=True)
class Entry:
    category: int
    recipient_country: str
    price: int


@dataclass(frozen=True)
class Card:
    row: RateCardRow
    prices: Sequence[RatePriceRow]


async def set_rate_card(
    session: AsyncSession,
    now: datetime,
    *,
    currency: str,
    effective_time: datetime,
    entries: Sequence[Entry],
) -> Card:
    await store.lock_rate_cards(session, currency)
    version = await store.latest_version(session, currency) + 1
    row = {
        "id": new_id(),
        "currency": currency,
        "version": version,
        "effective_time": effective_time,
        "create_time": now,
    }
    prices = [
        {
            "rate_card_id": row["id"],
            "category": e.category,
            "recipient_country": e.recipient_country,
            "price": e.price,
        }
        for e in entries
    ]
    await store.insert_rate_card(session, row, prices)
    card = await store.rate_card_version(session, currency, version)
    assert card is not None
    return Card(card, await store.rate_card_prices(session, card.id))


async def get_rate_card(
    session: AsyncSession, *, currency: str, at: datetime, version: int
) -> Card:
    if version:
        card = await store.rate_card_version(session, currency, version)
    else:
        card = await store.rate_card_at(session, currency, at)
    if card is None:
        what = f"version {version}" if version else f"in force at {at.isoformat()}"
        raise NotFound(
            "RATE_CARD_NOT_FOUND",
            f"no {currency} rate card {what}",
            resource_type="rate_card",
            resource_name=f"{currency}/{version or at.isoformat()}",
        )
    return Card(card, await store.rate_card_prices(session, card.id))
