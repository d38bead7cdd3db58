"""Opening accounts and topping up wallets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc import ledger, store, transfers
from billing_svc.models import AccountRow
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.errors import AlreadyExists, InvalidArgument, NotFound

WALLETS = (pb.ACCOUNT_KIND_BUSINESS_WALLET, pb.ACCOUNT_KIND_ADVERTISER_WALLET)
# Which principal kind may own each account kind.
OWNER_KIND: dict[int, str] = {
    pb.ACCOUNT_KIND_BUSINESS_WALLET: "business",
    pb.ACCOUNT_KIND_ADVERTISER_WALLET: "advertiser",
    pb.ACCOUNT_KIND_PLATFORM_REVENUE: "platform",
}


def kind_name(kind: int) -> str:
    return str(pb.AccountKind.Name(kind))  # type: ignore[arg-type]


def owner_matches(kind: int, owner: str) -> bool:
    """Wallets belong to business:<id> / advertiser:<id>; platform accounts to "platform"."""
    want = OWNER_KIND.get(kind)
    if want == "platform":
        return owner == store.PLATFORM_OWNER
    prefix, sep, ident = owner.partition(":")
    return want is not None and sep == ":" and prefix == want and bool(ident)


async def create_account(
    session: AsyncSession,
    now: datetime,
    *,
    owner: str,
    kind: int,
    currency: str,
    credit_limit: int,
) -> AccountRow:
    if kind == pb.ACCOUNT_KIND_BUSINESS_WALLET:
        # One wallet per business: AuthorizeCharge finds it by the business id alone.
        existing = await store.find_account(session, owner, kind)
    else:
        existing = await store.find_account(session, owner, kind, currency)
    if existing is not None:
        raise AlreadyExists(
            "ACCOUNT_EXISTS",
            f"{owner} already has a {kind_name(kind)} account ({existing.id})",
        )
    await store.insert_account(
        session, owner=owner, kind=kind, currency=currency, credit_limit=credit_limit, now=now
    )
    row = await store.find_account(session, owner, kind, currency)
    assert row is not None
    return row


async def load(session: AsyncSession, account_id: str, *, lock: bool = False) -> AccountRow:
    row = await store.get_account(session, account_id, lock=lock)
    if row is None:
        raise NotFound(
            "ACCOUNT_NOT_FOUND",
            f"no account {account_id}",
            resource_type="account",
            resource_name=account_id,
        )
    return row


@dataclass(frozen=True)
class TopUp:
    transfer_id: str
    account: AccountRow
    balances: ledger.Balances


async def top_up(
    session: AsyncSession,
    now: datetime,
    *,
    account_id: str,
    amount: int,
    currency: str,
    external_reference: str,
) -> TopUp:
    wallet = await load(session, account_id, lock=True)
    if wallet.kind not in WALLETS:
        raise InvalidArgument(
            [("account_id", "only business and advertiser wallets are topped up")]
        )
    if wallet.currency != currency:
        raise InvalidArgument(
            [("amount.currency_code", f"must be the account's currency {wallet.currency}")]
        )
    settlement = await store.system_account(
        session, pb.ACCOUNT_KIND_EXTERNAL_SETTLEMENT, currency, ledger.UNLIMITED_CREDIT, now
    )
    done = await transfers.execute(
        session,
        ledger.Op.POSTED,
        settlement,
        wallet,
        amount,
        now,
        kind=pb.TRANSFER_KIND_TOP_UP,
        reference=external_reference,
    )
    return TopUp(done.transfer_id, wallet, done.credit)
