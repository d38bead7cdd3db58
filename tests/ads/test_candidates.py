"""ServeAd's candidate read: the best campaigns of a country and language, read best first from
ix_campaign_targets_rank (a page's worth of rows however many match), and the estimate kept on
the target rows following the bid and the counters, from migration 0002 on."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, insert, inspect, select, text, update

from ads_svc import campaigns, store
from ads_svc.models import CampaignRow
from bizmsg.ads.v1 import ads_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.storage import Database

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
CPM, CPC = ads_pb2.BID_TYPE_CPM, ads_pb2.BID_TYPE_CPC
ACTIVE, PAUSED = ads_pb2.CAMPAIGN_STATUS_ACTIVE, ads_pb2.CAMPAIGN_STATUS_PAUSED


def _campaign(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"c{i:05d}",
        "advertiser_id": "adv",
        "account_id": "acc",
        "business_id": "biz",
        "display_name": f"campaign {i}",
        "headline": "h",
        "body": "b",
        "media_uri": "",
        "call_to_action": 1,
        "countries": "[]",
        "languages": "[]",
        "interests": "[]",
        "bid_type": CPM,
        "bid_micros": 1_000,
        "currency_code": "EUR",
        "daily_budget_micros": 10**9,
        "lifetime_budget_micros": 10**10,
        "start_time": NOW - timedelta(days=1),
        "end_time": None,
        "cap_max_impressions": 0,
        "cap_period_days": 0,
        "status": ACTIVE,
        "spend_micros": 0,
        "spend_day": "",
        "spend_day_micros": 0,
        "impressions": 0,
        "clicks": 0,
        "unfunded_until": None,
        "create_time": NOW,
        "update_time": NOW,
    }
    return {**row, **overrides}


def _estimate(row: dict[str, Any]) -> float:
    """store._RANK_HINT in Python."""
    if row["bid_type"] == CPM:
        return float(row["bid_micros"])
    return float(row["bid_micros"]) * ((row["clicks"] + 1.0) / (row["impressions"] + 50.0)) * 1000.0


def on_ads_schema(database_url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    async def go() -> None:
        db = Database(database_url)
        await db.migrate("ads_svc:migrations")
        try:
            await body(db)
        finally:
            await db.dispose()

    asyncio.run(go())


async def _seed(db: Database, rng: random.Random, count: int) -> list[dict[str, Any]]:
    """`count` campaigns of every kind the read tells apart, each targeting DE in German,
    in any language, or another country."""
    rows, targets = [], []
    for i in range(count):
        row = _campaign(
            i,
            bid_type=rng.choice([CPM, CPC]),
            bid_micros=rng.choice([1_000, 2_000, rng.randint(1, 10**6)]),  # ties, and spread
            impressions=rng.randint(0, 5_000),
            clicks=rng.randint(0, 50),
            status=ACTIVE if rng.random() < 0.9 else PAUSED,
            start_time=NOW + timedelta(days=1) if rng.random() < 0.05 else NOW - timedelta(days=1),
            end_time=NOW - timedelta(hours=1) if rng.random() < 0.05 else None,
        )
        rows.append(row)
        country, language = rng.choice([("DE", "de"), ("DE", "*"), ("FR", "fr"), ("FR", "*")])
        row["target"] = (country, language)
        targets.append({"country": country, "language": language, "campaign_id": row["id"]})
    async with db.write() as session:
        campaigns = [{k: v for k, v in r.items() if k != "target"} for r in rows]
        await session.execute(insert(store.CAMPAIGNS), campaigns)
        await session.execute(insert(store.TARGETS), targets)
        await store.refresh_all_ranks(await session.connection())
    if db.dialect == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execute(text("ANALYZE campaigns"))
            await conn.execute(text("ANALYZE campaign_targets"))
    return rows


def _expected(
    rows: list[dict[str, Any]], language: str, limit: int, at_most: float | None
) -> list[str]:
    languages = {language, "*"}
    eligible = [
        r
        for r in rows
        if r["target"][0] == "DE"
        and r["target"][1] in languages
        and r["status"] == ACTIVE
        and r["start_time"] <= NOW
        and (r["end_time"] is None or r["end_time"] > NOW)
        and (at_most is None or _estimate(r) <= at_most)
    ]
    eligible.sort(key=lambda r: (_estimate(r), r["id"]), reverse=True)
    return [r["id"] for r in eligible[:limit]]


def test_the_best_campaigns_come_back_best_first_as_judging_them_all_would(
    database_url: str,
) -> None:
    async def body(db: Database) -> None:
        rng = random.Random(7)
        rows = await _seed(db, rng, 400)
        async with db.connect() as conn:
            for language in ("de", "*", "en"):
                for limit in (1, 16, 500):
                    for at_most in (None, 1_000.0, 1e12):
                        got = await store.candidates(conn, "DE", language, NOW, limit, at_most)
                        assert [r.id for r in got] == _expected(rows, language, limit, at_most)
                        assert [r.hint for r in got] == sorted((r.hint for r in got), reverse=True)

    on_ads_schema(database_url, body)


def test_the_read_walks_the_rank_index_instead_of_sorting_every_match(database_url: str) -> None:
    async def body(db: Database) -> None:
        await _seed(db, random.Random(3), 3_000)
        params = {"country": "DE", "language": "de", "now": NOW, "limit": 16}
        compiled, args = store._P_CANDIDATES[False, False]._prepare(db.dialect, params)
        async with db.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if db.dialect == "sqlite":
                rows = await driver.execute_fetchall(f"EXPLAIN QUERY PLAN {compiled.sql}", args)
                plan = [str(row[-1]) for row in rows]
                walks = [p for p in plan if "campaign_targets" in p]
                assert len(walks) == 2, plan  # one per language, each in index order:
                assert all("USING COVERING INDEX ix_campaign_targets_rank" in p for p in walks)
            else:
                # The plan a prepared statement keeps once PostgreSQL settles on a generic one.
                values = ", ".join(_literal(a) for a in args)
                await driver.execute("SET plan_cache_mode = force_generic_plan")
                await driver.execute(f"PREPARE candidates AS {compiled.sql}")
                rows = await driver.fetch(f"EXPLAIN EXECUTE candidates({values})")
                await driver.execute("DEALLOCATE candidates")
                plan = [str(row[0]) for row in rows]
                walks = [p for p in plan if " on campaign_targets" in p]
                assert len(walks) == 2, plan
                assert all("Scan Backward using ix_campaign_targets_rank" in p for p in walks)
                assert "Seq Scan" not in "\n".join(plan), plan

    on_ads_schema(database_url, body)


def _literal(value: Any) -> str:
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def test_the_estimate_on_the_target_rows_follows_the_bid_and_the_counters(
    database_url: str,
) -> None:
    async def estimates(db: Database, campaign_id: str) -> tuple[set[float], float]:
        async with db.read() as session:
            kept = set(
                (
                    await session.execute(
                        select(store.TARGETS.c.rank_hint).where(
                            store.TARGETS.c.campaign_id == campaign_id
                        )
                    )
                ).scalars()
            )
            now = (
                await session.execute(
                    select(store._RANK_HINT).where(store.CAMPAIGNS.c.id == campaign_id)
                )
            ).scalar_one()
        return kept, now

    async def body(db: Database) -> None:
        row = CampaignRow(**_campaign(1, bid_type=CPC, bid_micros=5_000))
        async with db.write() as session:
            await store.insert_campaign(session, row, ["DE", "FR"], ["de", "fr"])
        first, now = await estimates(db, "c00001")
        assert first == {now} and now == _estimate(_campaign(1, bid_type=CPC, bid_micros=5_000))

        async def changed(change: Callable[[Any], Awaitable[Any]]) -> float:
            async with db.write() as session:
                await change(session)
            kept, now = await estimates(db, "c00001")
            assert kept == {now}  # every target row, in the same transaction
            return now

        served = await changed(lambda s: _serve(s, "c00001"))
        assert served < now  # an impression lowers a CPC campaign's estimate
        clicked = await changed(lambda s: store.count_click(s, "c00001"))
        assert clicked > served
        refunded = await changed(
            lambda s: store.release(s, "c00001", amount=0, day="", impressions=1)
        )
        assert refunded > clicked
        rebid = await changed(lambda s: _rebid(s, "c00001", 50_000))
        assert rebid == pytest.approx(10 * refunded, rel=1e-12)

    on_ads_schema(database_url, body)


async def _serve(session: Any, campaign_id: str) -> None:
    reserved = await store.reserve_impression(
        await session.connection(), campaign_id, amount=10, room=10, today="2026-06-01"
    )
    assert reserved is not None


async def _rebid(session: Any, campaign_id: str, micros: int) -> None:
    # What campaigns.update does: the row changed, then its targets written again.
    await session.execute(
        update(CampaignRow).where(CampaignRow.id == campaign_id).values(bid_micros=micros)
    )
    await store.replace_targets(session, campaign_id, ["DE"], ["de"])


def test_migration_0002_gives_existing_targets_their_campaigns_estimates(
    database_url: str,
) -> None:
    def to(conn: Connection, revision: str, *, down: bool = False) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", "ads_svc:migrations")
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    rows = [
        _campaign(1, bid_type=CPM, bid_micros=7_000),
        _campaign(2, bid_type=CPC, bid_micros=9_000, impressions=120, clicks=3),
        _campaign(3, bid_type=CPM, bid_micros=8_000, status=PAUSED),
    ]

    async def go() -> None:
        db = Database(database_url)
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(to, "0001")
                await conn.execute(insert(store.CAMPAIGNS), rows)
                await conn.execute(
                    text("INSERT INTO campaign_targets VALUES (:c, :l, :id)"),
                    [{"c": "DE", "l": lang, "id": r["id"]} for r in rows for lang in "ab"],
                )
            async with db.engine.begin() as conn:
                await conn.run_sync(to, "0002")
                kept = (
                    await conn.execute(
                        select(store.TARGETS.c.campaign_id, store.TARGETS.c.rank_hint)
                    )
                ).all()
                expected = {r["id"]: _estimate(r) for r in rows}
                expected["c00003"] = store.RETIRED_RANK  # paused
                assert len(kept) == 6
                assert all(hint == pytest.approx(expected[c], rel=1e-12) for c, hint in kept)
                await conn.run_sync(to, "0001", down=True)
                columns = await conn.run_sync(
                    lambda c: [col["name"] for col in inspect(c).get_columns("campaign_targets")]
                )
                assert columns == ["country", "language", "campaign_id"]
        finally:
            await db.dispose()

    asyncio.run(go())


def test_paused_and_ended_campaigns_leave_the_walk_and_come_back(database_url: str) -> None:
    admin = Principal.parse("admin")
    clock = ManualClock(NOW)

    async def ranks(db: Database) -> dict[str, float]:
        async with db.read() as session:
            rows = await session.execute(
                select(store.TARGETS.c.campaign_id, store.TARGETS.c.rank_hint)
            )
            return {c: h for c, h in rows}

    async def body(db: Database) -> None:
        async with db.write() as session:
            for i, end in ((1, None), (2, NOW + timedelta(hours=1)), (3, None)):
                row = CampaignRow(**_campaign(i, bid_micros=1_000 * i, end_time=end))
                await store.insert_campaign(session, row, ["DE"], ["de"])
        assert await ranks(db) == {"c00001": 1_000.0, "c00002": 2_000.0, "c00003": 3_000.0}

        async with db.write() as session:
            await campaigns.set_status(session, clock, admin, "c00003", PAUSED)
        assert (await ranks(db))["c00003"] == store.RETIRED_RANK
        # The schedule ends: nothing changes until the job retires it, and the read skips it.
        later = NOW + timedelta(hours=2)
        async with db.connect() as conn:
            assert [r.id for r in await store.candidates(conn, "DE", "de", later, 16)] == ["c00001"]
        async with db.write() as session:
            assert await store.retire_ended(await session.connection(), later) == 1
            assert await store.retire_ended(await session.connection(), later) == 0
        assert await ranks(db) == {
            "c00001": 1_000.0,
            "c00002": store.RETIRED_RANK,
            "c00003": store.RETIRED_RANK,
        }

        async with db.write() as session:
            await campaigns.set_status(session, clock, admin, "c00003", ACTIVE)
        assert (await ranks(db))["c00003"] == 3_000.0
        async with db.connect() as conn:
            got = await store.candidates(conn, "DE", "de", later, 16)
        assert [r.id for r in got] == ["c00003", "c00001"]

    on_ads_schema(database_url, body)
