"""Each service's Alembic scripts build exactly the schema its models declare, on both backends:
a model changed without a migration (or the reverse) fails here, not in production. On SQLite
that includes which tables are WITHOUT ROWID (Alembic's comparison does not look at it)."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from bizmsg.kit.storage import Database


@pytest.mark.parametrize("service", ["consent", "delivery", "billing", "ads"])
def test_migrations_build_the_models_schema(service: str, database_url: str) -> None:
    models = importlib.import_module(f"{service}_svc.models")

    async def go() -> tuple[list[Any], dict[str, bool]]:
        db = Database(database_url)
        try:
            await db.migrate(f"{service}_svc:migrations")
            async with db.engine.connect() as conn:
                diffs = await conn.run_sync(
                    lambda c: compare_metadata(
                        MigrationContext.configure(c, opts={"compare_type": True}),
                        models.Base.metadata,
                    )
                )
                rowid: dict[str, bool] = {}
                if db.dialect == "sqlite":
                    rows = await conn.execute(
                        text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
                    )
                    rowid = {name: "WITHOUT ROWID" not in sql.upper() for name, sql in rows}
                return diffs, rowid
        finally:
            await db.dispose()

    diffs, rowid = asyncio.run(go())
    assert diffs == []
    if rowid:
        declared = {
            t.name: t.dialect_options["sqlite"]["with_rowid"]
            for t in models.Base.metadata.sorted_tables
        }
        assert {name: rowid[name] for name in declared} == declared
