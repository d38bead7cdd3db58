"""The unique-people limit's count from hourly counts (store.people_since): the same figure as
counting the period's conversation starts, within a group commit too, and migration 0004 fills
the hours from the starts a database already holds. The tier rule end to end is in
test_limits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bizmsg.kit.storage import Database
from delivery_svc import store
from delivery_svc.models import ConversationCount, ConversationStart
from delivery_svc.policy import UNIQUE_PEOPLE_PERIOD, hour_window

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def on_delivery_schema(database_url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    async def go() -> None:
        db = Database(database_url)
        try:
            await db.migrate("delivery_svc:migrations")
            await body(db)
        finally:
            await db.dispose()

    asyncio.run(go())


async def _start(conn: AsyncConnection, business: str, person: str, now: datetime) -> bool:
    """What limits.count does for a send outside any window."""
    if not await store.start_conversation(conn, business, person, now, now - UNIQUE_PEOPLE_PERIOD):
        return False
    await store.count_conversation(conn, business, hour_window(now.timestamp()))
    return True


async def _brute(db: Database, business: str, since: datetime) -> int:
    async with db.read() as s:
        q = select(func.count()).where(
            ConversationStart.business_id == business, ConversationStart.start_time > since
        )
        return int((await s.execute(q)).scalar_one())


def test_people_since_equals_counting_the_starts(database_url: str) -> None:
    """Two days of starts at random times (some people messaged again: counted again only after
    the period), another business's beside. After each start, as the limit asks at that
    moment: the exact figure is the count of starts in the last 24 hours, and the cheap one an
    upper bound, off by no more than the starts of the first hour before its cut. Some cuts
    fall on an hour's first microsecond, or just before it."""
    rng = random.Random(7)
    times = [T0 + timedelta(seconds=rng.randrange(0, 2 * 86_400)) for _ in range(240)]
    for h in (25, 31, 40):
        on_the_hour = T0 + timedelta(hours=h)
        times += [
            on_the_hour,
            on_the_hour + timedelta(microseconds=1),
            on_the_hour - timedelta(microseconds=1),
        ]
    times.sort()

    async def body(db: Database) -> None:
        counted: list[datetime] = []  # the shop's starts, as counted per hour
        for i, now in enumerate(times):
            async with db.engine.begin() as conn:
                if await _start(conn, "shop", f"p{rng.randrange(0, 100)}", now):
                    counted.append(now)
                await _start(conn, "other", f"q{i}", now)
            since = now - UNIQUE_PEOPLE_PERIOD
            expected = await _brute(db, "shop", since)
            async with db.engine.connect() as conn:
                exact = await store.people_since(conn, "shop", since, exact_above=-1)
                cheap = await store.people_since(conn, "shop", since, exact_above=10**9)
            assert exact == expected, now
            hour = hour_window(since.timestamp())
            before_cut = sum(1 for t in counted if hour <= t.timestamp() and t <= since)
            assert expected <= cheap <= expected + before_cut, now
        assert 100 < len(counted) < len(times)  # some people were messaged again

    on_delivery_schema(database_url, body)


def test_a_group_commit_counts_its_own_new_conversations(database_url: str) -> None:
    """Sends of one group commit to new people: each sees the ones before it in the batch (the
    hour's count is held in memory until the flush) and the count lands once committed."""
    now = T0 + timedelta(hours=30, minutes=5)

    async def body(db: Database) -> None:
        async with db.engine.begin() as conn:  # yesterday's start, still in the period
            await _start(conn, "shop", "early", now - timedelta(hours=23))

        async def work(i: int, conn: AsyncConnection) -> int:
            assert await _start(conn, "shop", f"new{i}", now)
            return await store.people_since(
                conn, "shop", now - UNIQUE_PEOPLE_PERIOD, exact_above=-1
            )

        seen = await asyncio.gather(
            *(db.write_batched(lambda c, i=i: work(i, c)) for i in range(12))
        )
        assert sorted(seen) == list(range(2, 14))
        async with db.read() as s:
            rows = await s.execute(select(ConversationCount.hour_start, ConversationCount.count))
            counts = {int(h): int(c) for h, c in rows}
        assert counts == {
            hour_window((now - timedelta(hours=23)).timestamp()): 1,
            hour_window(now.timestamp()): 12,
        }

    on_delivery_schema(database_url, body)


def test_cleanup_drops_hours_older_than_the_period(database_url: str) -> None:
    now = T0 + timedelta(days=3)
    hours_before = hour_window((now - UNIQUE_PEOPLE_PERIOD).timestamp())

    async def body(db: Database) -> None:
        async with db.engine.begin() as conn:
            await _start(conn, "shop", "old", now - timedelta(hours=30))
            await _start(conn, "shop", "recent", now - timedelta(hours=2))
        async with db.engine.connect() as conn:
            assert await store.cleanup_due(conn, now, 0, hours_before)
        async with db.write() as s:
            await store.drop_conversation_counts_before(s, hours_before)
        async with db.engine.connect() as conn:
            assert not await store.cleanup_due(conn, now, 0, hours_before)
            assert (
                await store.people_since(conn, "shop", now - UNIQUE_PEOPLE_PERIOD, exact_above=-1)
                == 1
            )

    on_delivery_schema(database_url, body)


def _to(conn: Connection, revision: str, *, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", "delivery_svc:migrations")
    cfg.attributes["connection"] = conn
    (command.downgrade if down else command.upgrade)(cfg, revision)


def test_migration_0004_counts_the_starts_already_kept(database_url: str) -> None:
    starts = [
        ("shop", "a", T0 + timedelta(minutes=1)),
        ("shop", "b", T0 + timedelta(minutes=59, seconds=59)),
        ("shop", "c", T0 + timedelta(hours=1)),
        ("other", "a", T0 + timedelta(hours=5, minutes=30)),
    ]

    async def go() -> None:
        db = Database(database_url)
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(_to, "0003")
                await conn.execute(ConversationStart.__table__.insert(), [
                    {"business_id": b, "person_id": p, "start_time": t} for b, p, t in starts
                ])  # fmt: skip
            async with db.engine.begin() as conn:
                await conn.run_sync(_to, "0004")
                rows = await conn.execute(select(ConversationCount))
                counts = {(b, int(h)): int(c) for b, h, c in rows}
                indexes = await conn.run_sync(
                    lambda c: inspect(c).get_indexes("conversation_counts")
                )
            assert [(ix["name"], ix["column_names"]) for ix in indexes] == [
                ("ix_conversation_counts_hour", ["hour_start"])
            ]
            hour = int(T0.timestamp())
            assert counts == {
                ("shop", hour): 2,
                ("shop", hour + 3600): 1,
                ("other", hour + 5 * 3600): 1,
            }
            async with db.engine.begin() as conn:
                await conn.run_sync(_to, "0003", down=True)
                tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
                assert "conversation_counts" not in tables
        finally:
            await db.dispose()

    asyncio.run(go())
