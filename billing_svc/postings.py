"""One side of a transfer as one guarded UPDATE: the ledger's checks (ledger.check_debit and
ledger.check_credit) written as the WHERE clause, so a single statement checks and applies.

It is atomic under any concurrency: PostgreSQL, after waiting for a row lock, evaluates the
WHERE again on the newest row version; SQLite serialises writers. When the guard refuses
(0 rows), `post` locks the row, runs the Python check for the exact error, and applies the
change itself if a concurrent commit made it fine after all.

Every arithmetic step stays inside int64 whatever the column values (each is 0..2^63-1), so
PostgreSQL never raises "bigint out of range" and SQLite never falls back to floating point.
"""

from __future__ import annotations

import enum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    Update,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_svc import ledger, store
from billing_svc.models import AccountRow, RateCardRow
from bizmsg.kit.prepared import Prepared, Total

_T = cast(Table, AccountRow.__table__)
_CARDS = cast(Table, RateCardRow.__table__)
_COLUMNS = ("credits_posted", "debits_posted", "debits_pending", "credits_pending")
_AMOUNT = bindparam("amount", type_=BigInteger)
_MAX = literal(ledger.INT64_MAX, BigInteger)


class Side(enum.Enum):
    DEBIT = 0
    CREDIT = 1


def funds_guard(amount: ColumnElement[int]) -> ColumnElement[bool]:
    """debits_posted + debits_pending + amount <= credits_posted + credit_limit, with no
    intermediate value outside int64: x + y >= amount where x = credit_limit - debits_posted
    and y = credits_posted - debits_pending (each within +-int64); CASE fixes the order of
    evaluation, so a branch that could overflow is never computed."""
    c = _T.c
    x = c.credit_limit - c.debits_posted
    y = c.credits_posted - c.debits_pending
    return case((x >= 0, y >= amount - x), (y >= 0, x + y >= amount), else_=false())


def _guard(op: ledger.Op, side: Side) -> list[ColumnElement[bool]]:
    delta = ledger.deltas(op, 1)[side.value]
    conds: list[ColumnElement[bool]] = []
    for name in _COLUMNS:
        sign = getattr(delta, name)
        if sign > 0:
            conds.append(_T.c[name] <= _MAX - _AMOUNT)
        elif sign < 0:
            conds.append(_T.c[name] >= _AMOUNT)
    if side is Side.DEBIT and delta.debits_posted + delta.debits_pending > 0:
        conds.append(funds_guard(_AMOUNT))
    return conds


def _values(op: ledger.Op, side: Side) -> dict[str, Any]:
    delta = ledger.deltas(op, 1)[side.value]
    out: dict[str, Any] = {}
    for name in _COLUMNS:
        sign = getattr(delta, name)
        if sign:
            out[name] = _T.c[name] + _AMOUNT if sign > 0 else _T.c[name] - _AMOUNT
    return out


def _build(op: ledger.Op, side: Side, *, guarded: bool, card_check: bool = False) -> Update:
    conds = [_T.c.id == bindparam("account_id")]
    if guarded:
        conds += _guard(op, side)
    if card_check:
        # The rate-card cache is still current: no version was added since it was loaded.
        latest = (
            select(func.coalesce(func.max(_CARDS.c.version), 0))
            .where(_CARDS.c.currency == bindparam("card_currency"))
            .scalar_subquery()
        )
        conds.append(latest == bindparam("card_version", type_=BigInteger))
    return update(_T).where(and_(*conds)).values(**_values(op, side))


# Prepared (bizmsg.kit.prepared): every charge runs these.
_GUARDED = {
    (op, side): Prepared(_build(op, side, guarded=True)) for op in ledger.Op for side in Side
}
_PLAIN = {
    (op, side): Prepared(_build(op, side, guarded=False)) for op in ledger.Op for side in Side
}
_RESERVE = Prepared(_build(ledger.Op.PENDING, Side.DEBIT, guarded=True, card_check=True))
_LOCK = Prepared(
    select(_T.c.id, _T.c.currency, _T.c.credit_limit, *(_T.c[n] for n in _COLUMNS))
    .where(_T.c.id == bindparam("account_id"))
    .with_for_update()
)


# A group commit's authorizations add to the same rows (a business's wallet, the platform's
# revenue account): inside one, each row gets one UPDATE with their sum (Total), so its lock
# is held from just before the commit, not from the batch's first authorization. The guards
# are upper bounds on the row's sums and the card check does not depend on the amount, so the
# sum passes exactly when the reservations pass one after the other.
_RESERVE_TOTAL = Total(_RESERVE, "amount")
_CREDIT_PENDING_TOTAL = Total(_GUARDED[ledger.Op.PENDING, Side.CREDIT], "amount")


# An advertiser's ad charges in one group commit debit the same wallet and credit the same
# revenue account: one UPDATE per row with their sum, as for authorizations. The funds guard
# and the int64 bounds are upper bounds on the sums, so the sum passes exactly when the
# charges pass one after the other.
_POST_TOTAL = {side: Total(_GUARDED[ledger.Op.POSTED, side], "amount") for side in Side}


def post_later(conn: AsyncConnection, side: Side, account_id: str, amount: int) -> bool:
    """A posted transfer's side added to this group commit's sum for the account, checked and
    applied just before the commit (a refusal runs the batch again work by work, where
    `post` raises the exact error); False outside a group commit that defers (post it now)."""
    return _POST_TOTAL[side].add(conn, {"account_id": account_id, "amount": amount})


async def try_post(
    conn: AsyncConnection, op: ledger.Op, side: Side, account_id: str, amount: int
) -> bool:
    """Apply one side if the ledger allows it; False (nothing changed) when it does not."""
    params = {"account_id": account_id, "amount": amount}
    return await _GUARDED[op, side].execute(conn, params) == 1


def _reserve_params(
    account_id: str, amount: int, currency: str, card_version: int
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "amount": amount,
        "card_currency": currency,
        "card_version": card_version,
    }


async def try_reserve(
    conn: AsyncConnection, account_id: str, amount: int, currency: str, card_version: int
) -> bool:
    """Reserve `amount` on a wallet if it can pay and `card_version` is still the newest rate
    card of `currency`; False (nothing changed) otherwise."""
    params = _reserve_params(account_id, amount, currency, card_version)
    return await _RESERVE.execute(conn, params) == 1


def reserve_later(
    conn: AsyncConnection, account_id: str, amount: int, currency: str, card_version: int
) -> bool:
    """try_reserve's reservation added to this group commit's sum for the wallet, checked and
    applied just before the commit (a refusal runs the batch again work by work); False
    outside a group commit that defers (reserve now)."""
    return _RESERVE_TOTAL.add(conn, _reserve_params(account_id, amount, currency, card_version))


def credit_pending_later(conn: AsyncConnection, account_id: str, amount: int) -> bool:
    """The credit side of a pending transfer added to this group commit's sum for the
    account, as reserve_later; False outside one (post it now)."""
    return _CREDIT_PENDING_TOTAL.add(conn, {"account_id": account_id, "amount": amount})


async def post_locked(
    conn: AsyncConnection, op: ledger.Op, side: Side, account_id: str, amount: int
) -> None:
    """The slow path: lock the row, check in Python (raising the exact error), apply."""
    row = await _LOCK.first(conn, {"account_id": account_id})
    if row is None:
        raise NoResultFound(f"account {account_id}")
    check = ledger.check_debit if side is Side.DEBIT else ledger.check_credit
    check(op, store.balances(row), amount)
    await _PLAIN[op, side].execute(conn, {"account_id": account_id, "amount": amount})


async def post(
    conn: AsyncConnection, op: ledger.Op, side: Side, account_id: str, amount: int
) -> None:
    """Apply one side of a transfer, or raise the ledger's error with nothing changed."""
    if not await try_post(conn, op, side, account_id, amount):
        await post_locked(conn, op, side, account_id, amount)
