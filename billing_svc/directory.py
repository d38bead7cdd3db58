"""Which account is whose, in memory. An account's id, owner, kind and currency never change
and accounts are never deleted, so once an account was seen committed its identity can be
kept for the life of the process. Balances are never cached. An account not found (yet) is
not remembered: it may be opened at any moment, here or on another replica.

"Seen committed" is read outside the caller's transaction (Database.connect): inside it, a
work of a group commit also sees the rows an earlier work of the same batch made, and those
are gone if the batch is rolled back and run again work by work (a twin request_id in it,
say). Kept, such an id named an account that did not exist: each later charge to it failed
with an internal error.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_svc import store
from billing_svc.models import BUSINESS_WALLET_KIND, AccountRow
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.ids import new_id
from bizmsg.kit.prepared import Prepared
from bizmsg.kit.storage import Database

_T = cast(Table, AccountRow.__table__)
_COLS = (_T.c.id, _T.c.kind, _T.c.currency)
_FIND_Q = select(*_COLS).where(_T.c.owner == bindparam("owner"), _T.c.kind == bindparam("kind"))
_FIND = Prepared(_FIND_Q)
_FIND_SYSTEM = Prepared(
    _FIND_Q.where(_T.c.currency == bindparam("currency"), _T.c.shard == bindparam("shard"))
)
_BY_ID = Prepared(select(*_COLS).where(_T.c.id == bindparam("id")))
# Bounded, so a platform with millions of businesses does not grow the process without end.
MAX_ENTRIES = 50_000


def revenue_shard(payer_id: str, shards: int) -> int:
    """Which of `shards` revenue accounts a payer's charges go to (the same in every process)."""
    return zlib.crc32(payer_id.encode()) % shards


@dataclass(frozen=True)
class AccountRef:
    id: str
    kind: int
    currency: str


class _Lru:
    def __init__(self, size: int) -> None:
        self._d: OrderedDict[str, AccountRef] = OrderedDict()
        self._size = size

    def get(self, key: str) -> AccountRef | None:
        ref = self._d.get(key)
        if ref is not None:
            self._d.move_to_end(key)
        return ref

    def put(self, key: str, ref: AccountRef) -> None:
        self._d[key] = ref
        if len(self._d) > self._size:
            self._d.popitem(last=False)


class Directory:
    def __init__(
        self, db: Database, *, revenue_shards: int = 1, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.db = db
        self.revenue_shards = revenue_shards
        self._wallets = _Lru(max_entries)
        self._accounts = _Lru(max_entries)
        self._system: dict[tuple[int, str, int], str] = {}

    async def _find(
        self, conn: AsyncConnection, stmt: Prepared, params: dict[str, Any]
    ) -> tuple[Any, bool]:
        """The row as committed and True (it may be kept), else as the caller's transaction
        sees it and False (one it made, or one committed since: not kept)."""
        async with self.db.connect() as committed:
            row = await stmt.first(committed, params)
        if row is not None:
            return row, True
        return await stmt.first(conn, params), False

    async def _read(
        self,
        conn: AsyncConnection,
        stmt: Prepared,
        params: dict[str, Any],
        cache: _Lru,
        key: str,
    ) -> AccountRef | None:
        """An account not in `cache`, read as _find does; kept under `key` if committed."""
        row, committed = await self._find(conn, stmt, params)
        if row is None:
            return None
        ref = AccountRef(row.id, row.kind, row.currency)
        if committed:
            cache.put(key, ref)
        return ref

    async def wallet(self, conn: AsyncConnection, business_id: str) -> AccountRef | None:
        """The business's wallet, or None when it has none (yet)."""
        ref = self._wallets.get(business_id)
        if ref is None:
            params = {"owner": f"business:{business_id}", "kind": BUSINESS_WALLET_KIND}
            ref = await self._read(conn, _FIND, params, self._wallets, business_id)
        return ref

    async def account(self, conn: AsyncConnection, account_id: str) -> AccountRef | None:
        """Any account by id, or None when there is none (yet)."""
        ref = self._accounts.get(account_id)
        if ref is None:
            ref = await self._read(conn, _BY_ID, {"id": account_id}, self._accounts, account_id)
        return ref

    async def revenue_account(
        self, conn: AsyncConnection, currency: str, payer_id: str, now: datetime
    ) -> str:
        """The platform revenue account that charges to `payer_id` go to: one of
        `revenue_shards` per currency, always the same one for a payer, so charges of
        different payers lock different rows."""
        shard = revenue_shard(payer_id, self.revenue_shards)
        return await self.system_account(
            conn, pb.ACCOUNT_KIND_PLATFORM_REVENUE, currency, 0, now, shard=shard
        )

    async def system_account(
        self,
        conn: AsyncConnection,
        kind: int,
        currency: str,
        credit_limit: int,
        now: datetime,
        *,
        shard: int = 0,
    ) -> str:
        """The id of the platform's account of this kind, currency and shard, made on first use.

        No row lock here: the caller's guarded UPDATE locks it after the customer account.
        One made by this transaction is remembered only once seen committed (a later call).
        """
        key = (kind, currency, shard)
        found = self._system.get(key)
        if found is not None:
            return found
        params = {"owner": store.PLATFORM_OWNER, "kind": kind, "currency": currency, "shard": shard}
        row, committed = await self._find(conn, _FIND_SYSTEM, params)
        if row is not None:
            if committed:
                self._system[key] = row.id
            return str(row.id)
        await conn.execute(
            store.insert_account_stmt(conn.dialect.name, if_absent=True),
            store.account_values(
                id=new_id(),
                owner=store.PLATFORM_OWNER,
                kind=kind,
                currency=currency,
                credit_limit=credit_limit,
                now=now,
                shard=shard,
            ),
        )
        # Ours, or a concurrent caller's that won the race (then this waited for its commit).
        return str((await _FIND_SYSTEM.first(conn, params)).id)
