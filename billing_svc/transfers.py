"""Executing one checked transfer: the immutable row and both balance updates, in the caller's
transaction, after both accounts were locked (customer account first, then system account)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc import ledger, store
from billing_svc.models import AccountRow
from bizmsg.kit.ids import new_id


@dataclass(frozen=True)
class Done:
    transfer_id: str
    debit: ledger.Balances
    credit: ledger.Balances


async def execute(
    session: AsyncSession,
    op: ledger.Op,
    debit: AccountRow,
    credit: AccountRow,
    amount: int,
    now: datetime,
    *,
    kind: int,
    **fields: Any,
) -> Done:
    new_debit, new_credit, d_delta, c_delta = ledger.transfer(
        op, store.balances(debit), store.balances(credit), amount
    )
    transfer_id = new_id()
    await store.insert_transfer(
        await session.connection(),
        id=transfer_id,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount=amount,
        currency=debit.currency,
        kind=kind,
        pending=op is ledger.Op.PENDING,
        post_pending=op is ledger.Op.POST_PENDING,
        void_pending=op is ledger.Op.VOID_PENDING,
        create_time=now,
        **fields,
    )
    await store.add_to_account(session, debit.id, d_delta)
    await store.add_to_account(session, credit.id, c_delta)
    return Done(transfer_id, new_debit, new_credit)
