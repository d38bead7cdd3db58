"""Migration 0003 re-keys rate_counters by (window_start, key) and drops the window index, on
a database that already holds counts: the counts survive both ways, on both backends. And why:
the send's read probes both counters by their whole key in the generic plan PostgreSQL keeps,
even when that plan was made on a new deployment's empty tables."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect, text

from bizmsg.kit.storage import Database
from delivery_svc import store

COUNTS = {("b1:s", 100): 3, ("b1:p2", 60): 7, ("b2:s", 101): 1}


def _to(conn: Connection, revision: str, *, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", "delivery_svc:migrations")
    cfg.attributes["connection"] = conn
    (command.downgrade if down else command.upgrade)(cfg, revision)


def _shape(conn: Connection) -> tuple[list[str], list[str], dict[tuple[str, int], int]]:
    i = inspect(conn)
    pk = i.get_pk_constraint("rate_counters")["constrained_columns"]
    indexes = [ix["name"] for ix in i.get_indexes("rate_counters")]
    rows = conn.execute(text("SELECT key, window_start, count FROM rate_counters")).all()
    return pk, indexes, {(k, w): c for k, w, c in rows}


def test_rate_counters_keep_their_counts_through_0003_and_back(database_url: str) -> None:
    async def go() -> None:
        db = Database(database_url)
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(_to, "0002")
                for (key, window), count in COUNTS.items():
                    await conn.execute(
                        text("INSERT INTO rate_counters VALUES (:k, :w, :c)"),
                        {"k": key, "w": window, "c": count},
                    )
            async with db.engine.begin() as conn:
                await conn.run_sync(_to, "0003")
                pk, indexes, counts = await conn.run_sync(_shape)
                assert pk == ["window_start", "key"]
                assert indexes == []
                assert counts == COUNTS
                if db.dialect == "sqlite":
                    sql = (
                        await conn.execute(
                            text("SELECT sql FROM sqlite_master WHERE name = 'rate_counters'")
                        )
                    ).scalar_one()
                    assert "WITHOUT ROWID" in sql.upper()
            async with db.engine.begin() as conn:
                await conn.run_sync(_to, "0002", down=True)
                pk, indexes, counts = await conn.run_sync(_shape)
                assert pk == ["key", "window_start"]
                assert indexes == ["ix_rate_counters_window"]
                assert counts == COUNTS
        finally:
            await db.dispose()

    asyncio.run(go())


def test_send_read_probes_rate_counters_by_whole_key_in_a_generic_plan(
    database_url: str, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL only: SQLite plans each statement when it is prepared")
    compiled, _ = store._P_DEVICES_AND_LIMITS._prepare(
        "postgresql", dict.fromkeys(_READ_PARAMS, "x")
    )
    sql = compiled.sql  # every parameter carries its type cast, so PREPARE needs no list
    values = ", ".join(_READ_PARAMS[n] for n in compiled.names)

    async def plan() -> str:
        db = Database(database_url)
        try:
            await db.migrate("delivery_svc:migrations")
            async with db.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                await driver.execute("SET plan_cache_mode = force_generic_plan")
                await driver.execute(f"PREPARE send_read AS {sql}")
                rows = await driver.fetch(f"EXPLAIN EXECUTE send_read({values})")
                await driver.execute("DEALLOCATE send_read")
                return "\n".join(r[0] for r in rows)
        finally:
            await db.dispose()

    text = asyncio.run(plan())
    counters = [line for line in text.splitlines() if "on rate_counters" in line]
    assert len(counters) == 2 and all("rate_counters_pkey" in c for c in counters), text
    assert "Filter: ((key)" not in text, text


_READ_PARAMS = {
    "owner": "'user:p'",
    "business_id": "'b'",
    "person_id": "'p'",
    "second_key": "'mps:b'",
    "second": "100",
    "pair_key": "'pair:b:p'",
    "minute": "60",
    "answered_principal": "'business:b'",
    "answered_method": "'m'",
    "answered_request_id": "'r'",
}
