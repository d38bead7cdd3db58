"""Storage of the ads service: queries only, every hot one served by an index."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from typing import cast as tcast

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    Row,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.dml import Update

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
from bizmsg.kit.prepared import Prepared

ANY_LANGUAGE = "*"
# A result row of any columns.
AnyRow = Row[*tuple[Any, ...]]


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
    await refresh_rank(await session.connection(), campaign_id)


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


# Core tables: the hot statements below are built once, with bind parameters, and run
# without the ORM (no statement building or cache-key work per call).
CAMPAIGNS = tcast(Table, CampaignRow.__table__)
TARGETS = tcast(Table, CampaignTargetRow.__table__)
IMPRESSIONS = tcast(Table, ImpressionRow.__table__)
DAILY_STATS = tcast(Table, DailyStatsRow.__table__)
_c = CAMPAIGNS.c

# What eligibility and the auction read of each candidate, in eligibility.Candidate's field
# order; no creative (the winner's creative comes back from its budget reservation).
CANDIDATE_COLUMNS = (
    _c.id,
    _c.bid_type,
    _c.bid_micros,
    _c.interests,
    _c.cap_max_impressions,
    _c.cap_period_days,
    _c.daily_budget_micros,
    _c.lifetime_budget_micros,
    _c.spend_micros,
    _c.spend_day,
    _c.spend_day_micros,
    _c.start_time,
    _c.end_time,
    _c.unfunded_until,
    _c.impressions,
    _c.clicks,
)
# What a served ad needs of its campaign, returned by the reservation that serves it.
AD_COLUMNS = (
    _c.account_id,
    _c.business_id,
    _c.headline,
    _c.body,
    _c.media_uri,
    _c.call_to_action,
    _c.bid_type,
    _c.currency_code,
)

# The auction score estimated in SQL (floats are fine: it only orders candidates).
_RANK_HINT = case(
    (_c.bid_type == ads_pb2.BID_TYPE_CPM, cast(_c.bid_micros, Float)),
    else_=cast(_c.bid_micros, Float)
    * ((cast(_c.clicks, Float) + 1.0) / (cast(_c.impressions, Float) + 50.0))
    * 1000.0,
)

# What the target rows of a paused campaign, or of one whose schedule has ended, keep instead
# of its estimate (estimates are never negative): the candidate read stops before them,
# however high the campaign bid, instead of walking past them on every serve.
RETIRED_RANK = -1.0
_KEPT_RANK = case(
    (_c.status == ads_pb2.CAMPAIGN_STATUS_ACTIVE, _RANK_HINT), else_=literal(RETIRED_RANK)
)

_NOW = bindparam("now", type_=CAMPAIGNS.c.start_time.type)
_LIMIT = bindparam("limit", type_=Integer)


def _best_targeting(language: Any, *, at_most: bool) -> Any:
    """The `limit` best active, in-schedule campaigns with a target row for (country,
    `language`), walked best first in ix_campaign_targets_rank (no sort of all matches)."""
    t = TARGETS.c
    query = (
        select(*CANDIDATE_COLUMNS, t.rank_hint.label("hint"))
        .join_from(TARGETS, CAMPAIGNS, t.campaign_id == _c.id)
        .where(
            t.country == bindparam("country"),
            t.language == language,
            t.rank_hint >= 0,
            _c.status == ads_pb2.CAMPAIGN_STATUS_ACTIVE,
            _c.start_time <= _NOW,
            or_(_c.end_time.is_(None), _c.end_time > _NOW),
        )
        .order_by(t.rank_hint.desc(), t.campaign_id.desc())
        .limit(_LIMIT)
    )
    if at_most:
        query = query.where(t.rank_hint <= bindparam("at_most", type_=Float))
    return query


def _candidates(*, any_language_only: bool, at_most: bool) -> Prepared:
    """Candidates for one language and for any language ("*"): each list walked in index
    order and cut at the limit, then the two merged (a page's worth of rows at most twice)."""
    anyone = _best_targeting(ANY_LANGUAGE, at_most=at_most).subquery()
    if any_language_only:
        return Prepared(select(anyone))
    own = _best_targeting(bindparam("language"), at_most=at_most).subquery()
    both = union_all(select(own), select(anyone)).subquery()
    return Prepared(select(both).order_by(both.c.hint.desc(), both.c.id.desc()).limit(_LIMIT))


# By (whether the language asked for is "*", whether only estimates up to `at_most`).
_P_CANDIDATES = {
    (anyone, at_most): _candidates(any_language_only=anyone, at_most=at_most)
    for anyone in (False, True)
    for at_most in (False, True)
}


async def candidates(
    conn: AsyncConnection,
    country: str,
    language: str,
    now: datetime,
    limit: int,
    at_most: float | None = None,
) -> Sequence[AnyRow]:
    """Active, in-schedule campaigns targeting this country and language (or any language):
    the `limit` best by estimated score (only those estimated at most `at_most`, if given),
    best first, equal estimates in a fixed order. Rows of CANDIDATE_COLUMNS followed by the
    estimate ("hint", a float that only orders them)."""
    language = language or ANY_LANGUAGE
    params: dict[str, Any] = {"country": country, "language": language, "now": now, "limit": limit}
    if at_most is not None:
        params["at_most"] = at_most
    statement = _P_CANDIDATES[language == ANY_LANGUAGE, at_most is not None]
    return await statement.rows(conn, params)


# Target rows take their campaign's estimated score as it now stands (RETIRED_RANK if paused).
_REFRESH_RANKS = update(TARGETS).values(
    rank_hint=select(_KEPT_RANK).where(_c.id == TARGETS.c.campaign_id).scalar_subquery()
)
_REFRESH_RANK = Prepared(_REFRESH_RANKS.where(TARGETS.c.campaign_id == bindparam("campaign_id")))
_RETIRE_ENDED = Prepared(
    update(TARGETS)
    .where(
        TARGETS.c.rank_hint >= 0,
        TARGETS.c.campaign_id.in_(select(_c.id).where(_c.end_time <= _NOW)),
    )
    .values(rank_hint=RETIRED_RANK)
)


async def refresh_rank(conn: AsyncConnection, campaign_id: str) -> None:
    """The campaign's target rows take its estimated score as it now stands: run in every
    transaction that changes the bid, the click and impression counters or the status, after
    the change."""
    await _REFRESH_RANK.execute(conn, {"campaign_id": campaign_id})


async def retire_ended(conn: AsyncConnection, now: datetime) -> int:
    """Target rows of campaigns whose schedule has ended take RETIRED_RANK (a job runs this;
    until it does, the read walks past them); how many rows. A campaign given a later end
    takes its estimate again when its targets are written (replace_targets)."""
    return await _RETIRE_ENDED.execute(conn, {"now": now})


async def refresh_all_ranks(conn: AsyncConnection) -> None:
    """refresh_rank for every campaign, after campaigns were loaded in bulk with SQL."""
    await conn.execute(_REFRESH_RANKS)


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


_IMPRESSIONS_SINCE = (
    (ImpressionRow.person_id == bindparam("person_id"))
    & (ImpressionRow.campaign_id == bindparam("campaign_id"))
    & (ImpressionRow.serve_time > bindparam("since", type_=ImpressionRow.serve_time.type))
    & (ImpressionRow.state != FAILED)
)
_P_COUNT_RECENT = Prepared(select(func.count().label("seen")).where(_IMPRESSIONS_SINCE))


async def count_recent(
    conn: AsyncConnection, person_id: str, campaign_id: str, since: datetime
) -> int:
    """The person's impressions of the campaign since `since` (index ix_impressions_person)."""
    params = {"person_id": person_id, "campaign_id": campaign_id, "since": since}
    return int((await _P_COUNT_RECENT.rows(conn, params))[0][0])


def _add_person_lock(insert_fn: Any) -> Any:
    return (
        insert_fn(PersonLockRow).values(person_id=bindparam("person_id")).on_conflict_do_nothing()
    )


_P_ADD_PERSON_LOCK = Prepared(
    _add_person_lock(sqlite.insert), postgresql=_add_person_lock(postgresql.insert)
)
_P_LOCK_PERSON = Prepared(
    select(PersonLockRow.person_id)
    .where(PersonLockRow.person_id == bindparam("person_id"))
    .with_for_update()
)


async def lock_person(conn: AsyncConnection, person_id: str) -> None:
    """Serialise capped serves of one person (a row lock; SQLite writers are serial anyway)."""
    await _P_ADD_PERSON_LOCK.execute(conn, {"person_id": person_id})
    await _P_LOCK_PERSON.rows(conn, {"person_id": person_id})


def _reserve(*, active_only: bool) -> Update:
    """Add :amount to a campaign's spend if the budgets allow it, in one conditional UPDATE.

    Allowed when spend + :room <= lifetime budget (room >= amount: for a CPC impression it
    is the click price the campaign must still be able to pay) and today's spend is still
    below the daily budget, so a day ends at most one event over. The row's own atomicity
    makes this hold across concurrent calls and replicas: PostgreSQL re-checks the WHERE
    on the latest row version after waiting for a concurrent writer.
    """
    amount = bindparam("amount", type_=BigInteger)
    today = bindparam("today", type_=String)
    return (
        update(CAMPAIGNS)
        .where(
            _c.id == bindparam("campaign_id", type_=String),
            _c.spend_micros + bindparam("room", type_=BigInteger) <= _c.lifetime_budget_micros,
            or_(_c.spend_day != today, _c.spend_day_micros < _c.daily_budget_micros),
            *([_c.status == ads_pb2.CAMPAIGN_STATUS_ACTIVE] if active_only else []),
        )
        .values(
            spend_micros=_c.spend_micros + amount,
            spend_day_micros=case(
                (_c.spend_day == today, _c.spend_day_micros + amount), else_=amount
            ),
            spend_day=today,
            impressions=_c.impressions + bindparam("add_impressions", type_=BigInteger),
            clicks=_c.clicks + bindparam("add_clicks", type_=BigInteger),
        )
    )


_RESERVE_ANY = _reserve(active_only=False)
_RESERVE_IMPRESSION = _reserve(active_only=True).returning(*AD_COLUMNS)


async def reserve(
    session: AsyncSession,
    campaign_id: str,
    *,
    amount: int,
    room: int,
    today: str,
    impressions: int = 0,
    clicks: int = 0,
) -> bool:
    """Reserve budget (see _reserve) whatever the campaign's status; whether it fit."""
    result = await session.execute(
        _RESERVE_ANY,
        {
            "campaign_id": campaign_id,
            "amount": amount,
            "room": room,
            "today": today,
            "add_impressions": impressions,
            "add_clicks": clicks,
        },
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if impressions or clicks:
        await refresh_rank(await session.connection(), campaign_id)
    return True


_P_RESERVE_IMPRESSION = Prepared(_RESERVE_IMPRESSION)


async def reserve_impression(
    conn: AsyncConnection, campaign_id: str, *, amount: int, room: int, today: str
) -> AnyRow | None:
    """Reserve budget for one impression of an active campaign and return its AD_COLUMNS
    (one statement: UPDATE ... RETURNING), or None when the budgets do not allow it."""
    row: AnyRow | None = await _P_RESERVE_IMPRESSION.first(
        conn,
        {
            "campaign_id": campaign_id,
            "amount": amount,
            "room": room,
            "today": today,
            "add_impressions": 1,
            "add_clicks": 0,
        },
    )
    if row is not None and row.bid_type != ads_pb2.BID_TYPE_CPM:
        # A CPM campaign's estimate is its bid: an impression leaves it where it was.
        await refresh_rank(conn, campaign_id)
    return row


_P_INSERT_IMPRESSION = Prepared(insert(IMPRESSIONS))


async def add_impression(
    conn: AsyncConnection, values: dict[str, Any], *, later: bool = False
) -> None:
    """A new impression row. `later`: in a group commit, with the batch's others before the
    commit; only when nothing later in the transaction counts it (an uncapped campaign's)."""
    await _P_INSERT_IMPRESSION.write(conn, values, later=later)


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
    if impressions or clicks:
        await refresh_rank(await session.connection(), campaign_id)


async def set_unfunded(session: AsyncSession, campaign_id: str, until: datetime) -> None:
    await session.execute(
        update(CampaignRow)
        .where(CampaignRow.id == campaign_id)
        .values(unfunded_until=until)
        .execution_options(synchronize_session=False)
    )


def _upsert_stats(insert_fn: Any) -> Any:
    """Add to a campaign's counters of one day (INSERT ... ON CONFLICT DO UPDATE)."""
    d = DAILY_STATS.c
    add_i = bindparam("add_impressions", type_=BigInteger)
    add_c = bindparam("add_clicks", type_=BigInteger)
    add_s = bindparam("add_spend", type_=BigInteger)
    ins = insert_fn(DAILY_STATS).values(
        campaign_id=bindparam("stat_campaign", type_=String),
        day=bindparam("stat_day", type_=String),
        impressions=add_i,
        clicks=add_c,
        spend_micros=add_s,
    )
    return ins.on_conflict_do_update(
        index_elements=[d.campaign_id, d.day],
        set_={
            "impressions": d.impressions + add_i,
            "clicks": d.clicks + add_c,
            "spend_micros": d.spend_micros + add_s,
        },
    )


_P_UPSERT_STATS = Prepared(
    _upsert_stats(sqlite.insert), postgresql=_upsert_stats(postgresql.insert)
)


async def add_stats(
    conn: AsyncConnection,
    campaign_id: str,
    day: str,
    *,
    impressions: int = 0,
    clicks: int = 0,
    spend: int = 0,
    later: bool = False,
) -> None:
    """Adds to the campaign's counters of the day. `later`: in a group commit, with the
    batch's other additions before the commit (nothing in the transaction reads them)."""
    row = {
        "stat_campaign": campaign_id,
        "stat_day": day,
        "add_impressions": impressions,
        "add_clicks": clicks,
        "add_spend": spend,
    }
    await _P_UPSERT_STATS.write(conn, row, later=later)


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


async def settle_impressions(
    session: AsyncSession, impression_ids: Sequence[str], state: str
) -> int:
    """settle_impression for many at once; how many moved."""
    if not impression_ids:
        return 0
    result = await session.execute(
        update(ImpressionRow)
        .where(ImpressionRow.id.in_(impression_ids), ImpressionRow.state == PENDING)
        .values(state=state)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


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
    await refresh_rank(await session.connection(), campaign_id)
