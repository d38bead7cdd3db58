"""Storage of the billing tables: queries only, no rules.

Row locks, in one fixed order so two transactions never wait on each other in a cycle:
the authorization, then the customer account, then the platform account. The hot path
(charges, postings) takes them with the UPDATE that changes the row; the rest with
SELECT ... FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers),
where `populate_existing` makes a locking read refresh a row the session had already
loaded, so the checks see the locked values.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, case, func, insert, null, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billing_svc import ledger
from billing_svc.models import (
    AccountRow,
    AuthorizationRow,
    RateCardRow,
    RatePriceRow,
    TransferRow,
)
from bizmsg.kit.ids import new_id
from bizmsg.kit.prepared import Prepared
from bizmsg.kit.storage import UTCDateTime

PLATFORM_OWNER = "platform"


def balances(row: AccountRow | Row[Any]) -> ledger.Balances:
    """The ledger's view of an account row (an ORM row or a Core row with the same columns)."""
    return ledger.Balances(
        account_id=row.id,
        currency=row.currency,
        credit_limit=row.credit_limit,
        credits_posted=row.credits_posted,
        debits_posted=row.debits_posted,
        debits_pending=row.debits_pending,
        credits_pending=row.credits_pending,
    )


async def get_account(
    session: AsyncSession, account_id: str, *, lock: bool = False
) -> AccountRow | None:
    q = select(AccountRow).where(AccountRow.id == account_id)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(q)).scalar_one_or_none()


async def find_account(
    session: AsyncSession, owner: str, kind: int, currency: str | None = None, *, lock: bool = False
) -> AccountRow | None:
    q = select(AccountRow).where(AccountRow.owner == owner, AccountRow.kind == kind)
    if currency is not None:
        q = q.where(AccountRow.currency == currency)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(q.limit(1))).scalar_one_or_none()


async def list_accounts(
    session: AsyncSession, owner: str, after_id: str, limit: int
) -> Sequence[AccountRow]:
    q = (
        select(AccountRow)
        .where(AccountRow.owner == owner, AccountRow.id > after_id)
        .order_by(AccountRow.id)
        .limit(limit)
    )
    return (await session.execute(q)).scalars().all()


def account_values(
    *,
    id: str,
    owner: str,
    kind: int,
    currency: str,
    credit_limit: int,
    now: datetime,
    shard: int = 0,
) -> dict[str, Any]:
    return {
        "shard": shard,
        "id": id,
        "owner": owner,
        "kind": kind,
        "currency": currency,
        "credit_limit": credit_limit,
        "credits_posted": 0,
        "debits_posted": 0,
        "debits_pending": 0,
        "credits_pending": 0,
        "create_time": now,
    }


def insert_account_stmt(dialect: str, *, if_absent: bool) -> Any:
    if not if_absent:
        return insert(AccountRow)
    if dialect == "postgresql":
        return postgresql.insert(AccountRow).on_conflict_do_nothing()
    return sqlite.insert(AccountRow).on_conflict_do_nothing()


async def insert_account(
    session: AsyncSession,
    *,
    owner: str,
    kind: int,
    currency: str,
    credit_limit: int,
    now: datetime,
    if_absent: bool = False,
) -> None:
    values = account_values(
        id=new_id(), owner=owner, kind=kind, currency=currency, credit_limit=credit_limit, now=now
    )
    stmt = insert_account_stmt(session.get_bind().dialect.name, if_absent=if_absent)
    await session.execute(stmt.values(**values))


async def system_account(
    session: AsyncSession, kind: int, currency: str, credit_limit: int, now: datetime
) -> AccountRow:
    """The platform's account of this kind and currency, made on first use, locked."""
    row = await find_account(session, PLATFORM_OWNER, kind, currency, lock=True)
    if row is None:
        await insert_account(
            session,
            owner=PLATFORM_OWNER,
            kind=kind,
            currency=currency,
            credit_limit=credit_limit,
            now=now,
            if_absent=True,
        )
        row = await find_account(session, PLATFORM_OWNER, kind, currency, lock=True)
    assert row is not None  # inserted above, or by a concurrent caller that won the race
    return row


async def add_to_account(session: AsyncSession, account_id: str, d: ledger.Delta) -> None:
    """Relative update, applied to a row this transaction holds locked."""
    t = AccountRow
    await session.execute(
        update(t)
        .where(t.id == account_id)
        .values(
            credits_posted=t.credits_posted + d.credits_posted,
            debits_posted=t.debits_posted + d.debits_posted,
            debits_pending=t.debits_pending + d.debits_pending,
            credits_pending=t.credits_pending + d.credits_pending,
        )
        .execution_options(synchronize_session=False)
    )


_TRANSFER_DEFAULTS: dict[str, Any] = {
    "pending": False,
    "post_pending": False,
    "void_pending": False,
    "pending_id": None,
    "category": 0,
    "recipient_country": "",
    "campaign_id": "",
    "ad_event_kind": 0,
    "reference": "",
}
# Core statements built once: the hot path skips the ORM unit of work and statement building.
_INSERT_TRANSFER = Prepared(insert(cast(Table, TransferRow.__table__)))
_INSERT_AUTHORIZATION = Prepared(insert(cast(Table, AuthorizationRow.__table__)))


async def insert_transfer(conn: AsyncConnection, *, later: bool = False, **values: Any) -> None:
    await _INSERT_TRANSFER.write(conn, {**_TRANSFER_DEFAULTS, **values}, later=later)


async def insert_authorization(
    conn: AsyncConnection, *, later: bool = False, **values: Any
) -> None:
    await _INSERT_AUTHORIZATION.write(conn, values, later=later)


async def get_authorization(conn: AsyncConnection, authorization_id: str) -> Row[Any] | None:
    a = cast(Table, AuthorizationRow.__table__)
    return (await conn.execute(select(a).where(a.c.id == authorization_id))).first()


def _resolve_stmt(*, expired: bool) -> Any:
    a = cast(Table, AuthorizationRow.__table__)
    tr = cast(Table, TransferRow.__table__)
    now = bindparam("now", type_=UTCDateTime)
    due = a.c.expire_time <= now if expired else a.c.expire_time > now
    # The pending transfer's credit account (the platform account the money went to).
    credit = (
        select(tr.c.credit_account_id)
        .where(tr.c.id == a.c.pending_transfer_id)
        .scalar_subquery()
        .label("credit_account_id")
    )
    return (
        update(a)
        .where(a.c.id == bindparam("authorization_id"), a.c.state == bindparam("open"), due)
        .values(
            state=bindparam("state"),
            void_reason=bindparam("void_reason"),
            resolve_time=now,
            resolve_transfer_id=case(
                (a.c.pending_transfer_id.is_(None), null()), else_=bindparam("transfer_id")
            ),
        )
        .returning(
            a.c.account_id,
            a.c.pending_transfer_id,
            a.c.amount,
            a.c.currency,
            a.c.category,
            a.c.recipient_country,
            credit,
        )
    )


_RESOLVE = {expired: Prepared(_resolve_stmt(expired=expired)) for expired in (False, True)}


async def resolve_open(
    conn: AsyncConnection,
    authorization_id: str,
    *,
    open_state: int,
    state: int,
    void_reason: int,
    transfer_id: str,
    now: datetime,
    expired: bool,
) -> Row[Any] | None:
    """Move an open authorization to `state` in one statement (which also locks it): only if
    it is still `open_state` and, with expired=False, not yet past its expire_time (with
    expired=True, only once past it). Returns what resolving it needs, or None."""
    params = {
        "authorization_id": authorization_id,
        "open": open_state,
        "state": state,
        "void_reason": void_reason,
        "transfer_id": transfer_id,
        "now": now,
    }
    row: Row[Any] | None = await _RESOLVE[expired].first(conn, params)
    return row


async def expired_authorizations(
    session: AsyncSession, state: int, now: datetime, limit: int
) -> Sequence[str]:
    t = AuthorizationRow
    q = (
        select(t.id)
        .where(t.state == state, t.expire_time <= now)
        .order_by(t.expire_time)
        .limit(limit)
    )
    return (await session.execute(q)).scalars().all()


async def rate_card_at(session: AsyncSession, currency: str, at: datetime) -> RateCardRow | None:
    """The newest version in force at `at` (latest effective time, then highest version)."""
    q = (
        select(RateCardRow)
        .where(RateCardRow.currency == currency, RateCardRow.effective_time <= at)
        .order_by(RateCardRow.effective_time.desc(), RateCardRow.version.desc())
        .limit(1)
    )
    return (await session.execute(q)).scalar_one_or_none()


async def rate_card_version(
    session: AsyncSession, currency: str, version: int
) -> RateCardRow | None:
    q = select(RateCardRow).where(RateCardRow.currency == currency, RateCardRow.version == version)
    return (await session.execute(q)).scalar_one_or_none()


async def lock_rate_cards(session: AsyncSession, currency: str) -> None:
    """Serialise writers of a currency's rate cards until commit, so concurrent SetRateCard
    calls take consecutive version numbers instead of failing on the unique index. SQLite
    writers are serialised already."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"billing.rate_cards.{currency}".encode())
        await session.execute(select(func.pg_advisory_xact_lock(key)))


async def latest_version(session: AsyncSession, currency: str) -> int:
    q = select(func.max(RateCardRow.version)).where(RateCardRow.currency == currency)
    return int((await session.execute(q)).scalar_one_or_none() or 0)


async def insert_rate_card(
    session: AsyncSession, row: dict[str, Any], prices: Sequence[dict[str, Any]]
) -> None:
    await session.execute(insert(RateCardRow).values(**row))
    if prices:
        await session.execute(insert(RatePriceRow), list(prices))


async def rate_card_prices(session: AsyncSession, rate_card_id: str) -> Sequence[RatePriceRow]:
    q = (
        select(RatePriceRow)
        .where(RatePriceRow.rate_card_id == rate_card_id)
        .order_by(RatePriceRow.category, RatePriceRow.recipient_country)
    )
    return (await session.execute(q)).scalars().all()


def _side(column: Any, account_id: str, start: datetime | None, end: datetime | None) -> Any:
    q = select(TransferRow).where(column == account_id)
    if start is not None:
        q = q.where(TransferRow.create_time >= start)
    if end is not None:
        q = q.where(TransferRow.create_time < end)
    return q


async def list_transfers(
    session: AsyncSession,
    account_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[TransferRow]:
    """An account's transfers by (create_time, id): two index range scans merged, so a
    page costs the same on an account with a million transfers."""
    rows: list[TransferRow] = []
    for column in (TransferRow.debit_account_id, TransferRow.credit_account_id):
        q = _side(column, account_id, start, end)
        if after is not None:
            q = q.where(tuple_(TransferRow.create_time, TransferRow.id) > tuple_(*after))
        q = q.order_by(TransferRow.create_time, TransferRow.id).limit(limit)
        rows.extend((await session.execute(q)).scalars().all())
    rows.sort(key=lambda r: (r.create_time, r.id))
    return rows[:limit]


async def posted_sums(
    session: AsyncSession, account_id: str, *, start: datetime | None, end: datetime | None
) -> list[tuple[str, int, int, str, int, int, int]]:
    """Posted transfers grouped by (side, kind, category, country, ad kind): count and sum.

    Posted means a plain transfer or a post_pending one; pending and void transfers move
    nothing posted.
    """
    out: list[tuple[str, int, int, str, int, int, int]] = []
    t = TransferRow
    for side, column in (("debit", t.debit_account_id), ("credit", t.credit_account_id)):
        q = (
            select(
                t.kind,
                t.category,
                t.recipient_country,
                t.ad_event_kind,
                func.count(),
                func.coalesce(func.sum(t.amount), 0),
            )
            .where(column == account_id, t.pending.is_(False), t.void_pending.is_(False))
            .group_by(t.kind, t.category, t.recipient_country, t.ad_event_kind)
        )
        if start is not None:
            q = q.where(t.create_time >= start)
        if end is not None:
            q = q.where(t.create_time < end)
        for kind, category, country, ad_kind, count, total in (await session.execute(q)).all():
            out.append((side, kind, category, country, ad_kind, int(count), int(total)))
    return out
