"""billing_svc/directory.py keeps only what it saw committed: an account made in a group
commit that was then rolled back (and run again work by work) is not remembered, so no later
charge is posted to an account that does not exist."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_svc import store
from billing_svc.directory import Directory
from billing_svc.models import BUSINESS_WALLET_KIND, AccountRow
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.ids import new_id
from bizmsg.kit.storage import Database
from bizmsg.kit.testing import sql_statements

NOW = datetime(2026, 12, 3, tzinfo=UTC)


class RolledBack(Exception):
    pass


def run(database_url: str, scenario: Callable[[Database], Awaitable[None]]) -> None:
    async def main() -> None:
        db = Database(database_url)
        try:
            await db.migrate("billing_svc:migrations")
            await scenario(db)
        finally:
            await db.dispose()

    asyncio.run(main())


async def rolled_back(db: Database, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    """What `work` saw inside a group commit that was then rolled back."""
    seen: list[Any] = []

    async def then_fail(conn: AsyncConnection) -> None:
        seen.append(await work(conn))
        raise RolledBack

    with pytest.raises(RolledBack):
        await db.write_batched(then_fail)
    return seen[0]


async def committed(db: Database, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    return await db.write_batched(work)


async def count_accounts(db: Database, account_id: str) -> int:
    async with db.read() as s:
        q = select(func.count()).where(AccountRow.id == account_id)
        return int((await s.execute(q)).scalar_one())


def test_a_wallet_seen_in_a_rolled_back_transaction_is_not_remembered(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        directory = Directory(db)

        async def open_and_look(conn: AsyncConnection) -> Any:
            await conn.execute(
                store.insert_account_stmt(conn.dialect.name, if_absent=False),
                store.account_values(
                    id=new_id(),
                    owner="business:ghost",
                    kind=BUSINESS_WALLET_KIND,
                    currency="EUR",
                    credit_limit=0,
                    now=NOW,
                ),
            )
            # A later work of the same batch sees the wallet the batch made.
            return await directory.wallet(conn, "ghost")

        assert (await rolled_back(db, open_and_look)) is not None
        assert await committed(db, lambda conn: directory.wallet(conn, "ghost")) is None

    run(database_url, scenario)


def test_a_revenue_account_made_in_a_rolled_back_transaction_is_made_again(
    database_url: str,
) -> None:
    async def scenario(db: Database) -> None:
        directory = Directory(db)

        async def twice(conn: AsyncConnection) -> str:
            made = await directory.revenue_account(conn, "EUR", "payer", NOW)
            # Seen again in the same transaction: the same account, not yet committed.
            assert await directory.revenue_account(conn, "EUR", "payer", NOW) == made
            return made

        ghost = await rolled_back(db, twice)
        assert await count_accounts(db, ghost) == 0
        real = await committed(db, twice)
        assert real != ghost
        assert await count_accounts(db, real) == 1
        # Seen committed by the next call, and kept from then on.
        assert await committed(db, twice) == real
        with sql_statements(db) as seen:
            assert await committed(db, twice) == real
        assert seen == []

    run(database_url, scenario)


def test_a_committed_account_is_kept(database_url: str) -> None:
    async def scenario(db: Database) -> None:
        directory = Directory(db)
        account_id = new_id()

        async def open_wallet(conn: AsyncConnection) -> None:
            await conn.execute(
                store.insert_account_stmt(conn.dialect.name, if_absent=False),
                store.account_values(
                    id=account_id,
                    owner="business:kept",
                    kind=pb.ACCOUNT_KIND_BUSINESS_WALLET,
                    currency="EUR",
                    credit_limit=0,
                    now=NOW,
                ),
            )

        await committed(db, open_wallet)
        ref = await committed(db, lambda conn: directory.account(conn, account_id))
        assert ref is not None and ref.id == account_id and ref.currency == "EUR"
        with sql_statements(db) as seen:
            assert await committed(db, lambda conn: directory.account(conn, account_id)) == ref
            assert (await committed(db, lambda conn: directory.wallet(conn, "kept"))) == ref
        assert len(seen) == 1  # the wallet, by owner: not yet seen

    run(database_url, scenario)
