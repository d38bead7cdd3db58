"""Storage of the ads service: queries only, every hot one served by an index."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Float, and_, case, cast, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ads_svc.models import (
    FAILED,
    PENDING,
    CampaignRow,
    CampaignTargetRow,
    ClickRow,
    DailyStatsRow,
    ImpressionRow,
    PersonLockRow,
)
from bizmsg.ads.v1 import ads_pb2

ANY_LANGUAGE = "*"


async def insert_campaign(
    session: AsyncSession, row: CampaignRow, countries: Sequence[str], languages: Sequence[str]
) -> None:
    session.add(row)
    await session.flush()
    await replace_targets(session, row.id, countries, languages)


async def replace_targets(
    session: AsyncSession, campaign_id: str, countries: Sequence[str], languages: Sequence[str]
) -> None:
    await session.execute(
        delete(CampaignTargetRow).where(CampaignTargetRow.campaign_id == campaign_id)
    )
    langs = list(languages) or [ANY_LANGUAGE]
    session.add_all(
        CampaignTargetRow(country=c, language=lang, campaign_id=campaign_id)
        for c in countries
        for lang in langs
    )
    await session.flush()


async def get_campaign(
    session: AsyncSession, campaign_id: str, *, lock: bool = False
) -> CampaignRow | None:
    stmt = select(CampaignRow).where(CampaignRow.id == campaign_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_campaigns(
    session: AsyncSession, advertiser_id: str | None, before_id: str | None, limit: int
) -> list[CampaignRow]:
    """Newest first (ids are time-ordered), keyset-paginated on (advertiser_id, id)."""
    stmt = select(CampaignRow)
    if advertiser_id is not None:
        stmt = stmt.where(CampaignRow.advertiser_id == advertiser_id)
    if before_id:
        stmt = stmt.where(CampaignRow.id < before_id)
    stmt = stmt.order_by(CampaignRow.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


def _rank_hint() -> object:
    """The auction score estimated in SQL (floats are fine: it only orders candidates)."""
    ctr = (cast(CampaignRow.clicks, Float) + 1.0) / (cast(CampaignRow.impressions, Float) + 50.0)
    return case(
        (CampaignRow.bid_type == ads_pb2.BID_TYPE_CPM, cast(CampaignRow.bid_micros, Float)),
        else_=cast(CampaignRow.bid_micros, Float) * ctr * 1000.0,
    )


async def candidates(
    session: AsyncSession, country: str, language: str, now: datetime, limit: int
) -> list[CampaignRow]:
    """Active, in-schedule campaigns targeting this country and language (or any language),
    found through the campaign_targets primary key; the `limit` best by estimated score."""
    stmt = (
        select(CampaignRow)
        .join(CampaignTargetRow, CampaignTargetRow.campaign_id == CampaignRow.id)
        .where(
            CampaignTargetRow.country == country,
            CampaignTargetRow.language.in_([language or ANY_LANGUAGE, ANY_LANGUAGE]),
            CampaignRow.status == ads_pb2.CAMPAIGN_STATUS_ACTIVE,
            CampaignRow.start_time <= now,
            or_(CampaignRow.end_time.is_(None), CampaignRow.end_time > now),
        )
        .order_by(_rank_hint().desc(), CampaignRow.id)  # type: ignore[attr-defined]
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def recent_impressions(
    session: AsyncSession, person_id: str, campaign_ids: Sequence[str], since: datetime
) -> dict[str, list[datetime]]:
    """The person's impressions of these campaigns since `since` (index ix_impressions_person)."""
    out: dict[str, list[datetime]] = defaultdict(list)
    if not campaign_ids:
        return out
    rows = await session.execute(
        select(ImpressionRow.campaign_id, ImpressionRow.serve_time).where(
            ImpressionRow.person_id == person_id,
            ImpressionRow.campaign_id.in_(campaign_ids),
            ImpressionRow.serve_time > since,
            ImpressionRow.state != FAILED,
        )
    )
    for campaign_id, serve_time in rows:
        out[campaign_id].append(serve_time)
    return out


async def count_recent(
    session: AsyncSession, person_id: str, campaign_id: str, since: datetime
) -> int:
    return int(
        (
            await session.execute(
                select(func.count()).where(
                    ImpressionRow.person_id == person_id,
                    ImpressionRow.campaign_id == campaign_id,
                    ImpressionRow.serve_time > since,
                    ImpressionRow.state != FAILED,
                )
            )
        ).scalar_one()
    )


def _insert(session: AsyncSession) -> object:
    """The dialect's INSERT, which has ON CONFLICT (both SQLite and PostgreSQL do)."""
    bind = session.get_bind()
    return postgresql.insert if bind.dialect.name == "postgresql" else sqlite.insert


async def lock_person(session: AsyncSession, person_id: str) -> None:
    """Serialise capped serves of one person (a row lock; SQLite writers are serial anyway)."""
    ins = _insert(session)(PersonLockRow).values(person_id=person_id)  # type: ignore[operator]
    await session.execute(ins.on_conflict_do_nothing())
    await session.execute(
        select(PersonLockRow.person_id)
        .where(PersonLockRow.person_id == person_id)
        .with_for_update()
    )


async def reserve(
    session: AsyncSession,
    campaign_id: str,
    *,
    amount: int,
    room: int,
    today: str,
    impressions: int = 0,
    clicks: int = 0,
    active_only: bool = True,
) -> bool:
    """Add `amount` to the campaign's spend if the budgets allow it, in one conditional UPDATE.

    Allowed when spend + room <= lifetime budget (room >= amount: for a CPC impression it is
    the click price the campaign must still be able to pay) and today's spend is still
    below the daily budget, so a day ends at most one event over. The row's own atomicity
    makes this hold across concurrent calls and replicas: PostgreSQL re-checks the WHERE
    on the latest row version after waiting for a concurrent writer.
    """
    c = CampaignRow
    stmt = (
        update(c)
        .where(
            c.id == campaign_id,
            c.spend_micros + room <= c.lifetime_budget_micros,
            or_(c.spend_day != today, c.spend_day_micros < c.daily_budget_micros),
            *([c.status == ads_pb2.CAMPAIGN_STATUS_ACTIVE] if active_only else []),
        )
        .values(
            spend_micros=c.spend_micros + amount,
            spend_day_micros=case(
                (c.spend_day == today, c.spend_day_micros + amount), else_=amount
            ),
            spend_day=today,
            impressions=c.impressions + impressions,
            clicks=c.clicks + clicks,
        )
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def release(
    session: AsyncSession,
    campaign_id: str,
    *,
    amount: int,
    day: str,
    impressions: int = 0,
    clicks: int = 0,
) -> None:
    """Undo a reservation billing refused."""
    c = CampaignRow
    await session.execute(
        update(c)
        .where(c.id == campaign_id)
        .values(
            spend_micros=c.spend_micros - amount,
            spend_day_micros=case(
                (c.spend_day == day, c.spend_day_micros - amount), else_=c.spend_day_micros
            ),
            impressions=c.impressions - impressions,
            clicks=c.clicks - clicks,
        )
        .execution_options(synchronize_session=False)
    )


async def set_unfunded(session: AsyncSession, campaign_id: str, until: datetime) -> None:
    await session.execute(
        update(CampaignRow)
        .where(CampaignRow.id == campaign_id)
        .values(unfunded_until=until)
        .execution_options(synchronize_session=False)
    )


async def add_stats(
    session: AsyncSession,
    campaign_id: str,
    day: str,
    *,
    impressions: int = 0,
    clicks: int = 0,
    spend: int = 0,
) -> None:
    s = DailyStatsRow
    ins = _insert(session)(s).values(  # type: ignore[operator]
        campaign_id=campaign_id, day=day, impressions=impressions, clicks=clicks, spend_micros=spend
    )
    await session.execute(
        ins.on_conflict_do_update(
            index_elements=[s.campaign_id, s.day],
            set_={
                "impressions": s.impressions + impressions,
                "clicks": s.clicks + clicks,
                "spend_micros": s.spend_micros + spend,
            },
        )
    )


async def stats(
    session: AsyncSession, campaign_id: str, first_day: str, last_day: str
) -> list[DailyStatsRow]:
    return list(
        (
            await session.execute(
                select(DailyStatsRow)
                .where(
                    DailyStatsRow.campaign_id == campaign_id,
                    DailyStatsRow.day >= first_day,
                    DailyStatsRow.day <= last_day,
                )
                .order_by(DailyStatsRow.day)
            )
        ).scalars()
    )


async def get_impression(session: AsyncSession, impression_id: str) -> ImpressionRow | None:
    return await session.get(ImpressionRow, impression_id)


async def settle_impression(session: AsyncSession, impression_id: str, state: str) -> bool:
    """Move a PENDING impression to its final state; False if someone else already did."""
    result = await session.execute(
        update(ImpressionRow)
        .where(ImpressionRow.id == impression_id, ImpressionRow.state == PENDING)
        .values(state=state)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def settle_click(
    session: AsyncSession, click_id: str, state: str, price_micros: int | None = None
) -> bool:
    """Move a PENDING click to its final state; False if someone else already did."""
    values: dict[str, object] = {"state": state}
    if price_micros is not None:
        values["price_micros"] = price_micros
    result = await session.execute(
        update(ClickRow)
        .where(ClickRow.id == click_id, ClickRow.state == PENDING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def get_click(session: AsyncSession, click_id: str) -> ClickRow | None:
    return await session.get(ClickRow, click_id)


async def click_for_impression(session: AsyncSession, impression_id: str) -> ClickRow | None:
    return (
        await session.execute(select(ClickRow).where(ClickRow.impression_id == impression_id))
    ).scalar_one_or_none()


async def pending_impressions(
    session: AsyncSession, before: datetime, limit: int
) -> list[ImpressionRow]:
    return list(
        (
            await session.execute(
                select(ImpressionRow)
                .where(and_(ImpressionRow.state == PENDING, ImpressionRow.serve_time <= before))
                .order_by(ImpressionRow.serve_time)
                .limit(limit)
            )
        ).scalars()
    )


async def pending_clicks(session: AsyncSession, before: datetime, limit: int) -> list[ClickRow]:
    return list(
        (
            await session.execute(
                select(ClickRow)
                .where(ClickRow.state == PENDING, ClickRow.create_time <= before)
                .order_by(ClickRow.create_time)
                .limit(limit)
            )
        ).scalars()
    )


async def count_click(session: AsyncSession, campaign_id: str) -> None:
    """A click that costs nothing still feeds the click-through estimate."""
    await session.execute(
        update(CampaignRow)
        .where(CampaignRow.id == campaign_id)
        .values(clicks=CampaignRow.clicks + 1)
        .execution_options(synchronize_session=False)
    )
