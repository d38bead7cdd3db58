"""Statements: an account's posted movements over a period, grouped by what they were for.

Balance here means credits_posted - debits_posted. The closing balance is the opening
balance plus the period's credits minus its debits, so a statement that ends now closes
at the account's posted balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc import store


@dataclass
class Line:
    kind: int
    category: int
    recipient_country: str
    ad_event_kind: int
    count: int = 0
    debits: int = 0
    credits: int = 0


@dataclass
class Statement:
    opening: int
    closing: int
    total_debits: int
    total_credits: int
    lines: list[Line] = field(default_factory=list)


def _net(sums: list[tuple[str, int, int, str, int, int, int]]) -> int:
    return sum(total if side == "credit" else -total for side, *_, total in sums)


async def statement(
    session: AsyncSession, account_id: str, start: datetime | None, end: datetime | None
) -> Statement:
    opening = 0
    if start is not None:
        opening = _net(await store.posted_sums(session, account_id, start=None, end=start))
    lines: dict[tuple[int, int, str, int], Line] = {}
    debits = credits = 0
    for side, kind, category, country, ad_kind, count, total in await store.posted_sums(
        session, account_id, start=start, end=end
    ):
        key = (kind, category, country, ad_kind)
        line = lines.setdefault(key, Line(kind, category, country, ad_kind))
        line.count += count
        if side == "debit":
            line.debits += total
            debits += total
        else:
            line.credits += total
            credits += total
    ordered = [lines[k] for k in sorted(lines)]
    return Statement(opening, opening + credits - debits, debits, credits, ordered)
