"""Each service's Alembic scripts build exactly the schema its models declare, on both backends:
a model changed without a migration (or the reverse) fails here, not in production."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bizmsg.kit.storage import Database


@pytest.mark.parametrize("service", ["consent", "delivery", "billing", "ads"])
def test_migrations_build_the_models_schema(service: str, database_url: str) -> None:
    models = importlib.import_module(f"{service}_svc.models")

    async def go() -> list[Any]:
        db = Database(database_url)
        try:
            await db.migrate(f"{service}_svc:migrations")
            async with db.engine.connect() as conn:
                return await conn.run_sync(
                    lambda c: compare_metadata(
                        MigrationContext.configure(c, opts={"compare_type": True}),
                        models.Base.metadata,
                    )
                )
        finally:
            await db.dispose()

    assert asyncio.run(go()) == []
