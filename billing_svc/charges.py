"""Message charges (authorize -> capture | void | expire) and ad charges.

An authorization is the mutable record of a two-phase charge; the money moves only through
immutable transfers: a pending one at authorization, then exactly one post_pending or
void_pending transfer (the unique pending_id index is the last line of defence).
A free message gets an authorization too, with no transfer, so delivery handles every
message the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc import ledger, pricing, store, transfers
from billing_svc.models import AccountRow, AuthorizationRow
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from bizmsg.kit.ids import new_id

AUTHORIZED = pb.AUTHORIZATION_STATE_AUTHORIZED
CAPTURED = pb.AUTHORIZATION_STATE_CAPTURED
VOIDED = pb.AUTHORIZATION_STATE_VOIDED
EXPIRED = pb.AUTHORIZATION_STATE_EXPIRED

_RESOLVED: dict[int, tuple[str, str]] = {
    CAPTURED: ("ALREADY_CAPTURED", "was already captured"),
    VOIDED: ("ALREADY_VOIDED", "was already voided"),
    EXPIRED: ("AUTHORIZATION_EXPIRED", "expired and was voided"),
}


@dataclass(frozen=True)
class Authorization:
    id: str
    amount: int
    currency: str
    rule: int
    state: int
    expire_time: datetime
    account_id: str
    pending_transfer_id: str
    rate_card_version: int


@dataclass(frozen=True)
class Resolution:
    authorization_id: str
    state: int
    amount: int
    currency: str
    transfer_id: str


async def authorize(
    session: AsyncSession,
    now: datetime,
    *,
    business_id: str,
    recipient_country: str,
    category: int,
    window: int,
    hold: timedelta,
) -> Authorization:
    q = await pricing.quote(
        session,
        now,
        business_id=business_id,
        recipient_country=recipient_country,
        category=category,
        window=window,
        lock_wallet=True,
    )
    auth_id = new_id()
    pending_id: str | None = None
    if not q.free:
        wallet = q.wallet
        assert wallet is not None  # pricing refuses a charged message without a wallet
        revenue = await _revenue(session, q.currency, now)
        done = await transfers.execute(
            session,
            ledger.Op.PENDING,
            wallet,
            revenue,
            q.amount,
            now,
            kind=pb.TRANSFER_KIND_MESSAGE_CHARGE,
            category=category,
            recipient_country=recipient_country,
            reference=auth_id,
        )
        pending_id = done.transfer_id
    expire_time = now + hold
    await store.insert_authorization(
        session,
        id=auth_id,
        business_id=business_id,
        account_id=q.wallet.id if q.wallet is not None else None,
        pending_transfer_id=pending_id,
        resolve_transfer_id=None,
        category=category,
        recipient_country=recipient_country,
        window=window,
        rule=q.rule,
        amount=q.amount,
        currency=q.currency,
        rate_card_version=q.rate_card_version,
        state=AUTHORIZED,
        void_reason=0,
        expire_time=expire_time,
        create_time=now,
        resolve_time=None,
    )
    return Authorization(
        auth_id,
        q.amount,
        q.currency,
        q.rule,
        AUTHORIZED,
        expire_time,
        q.wallet.id if q.wallet is not None else "",
        pending_id or "",
        q.rate_card_version,
    )


async def _revenue(session: AsyncSession, currency: str, now: datetime) -> AccountRow:
    return await store.system_account(session, pb.ACCOUNT_KIND_PLATFORM_REVENUE, currency, 0, now)


async def _locked_open(session: AsyncSession, authorization_id: str) -> AuthorizationRow:
    auth = await store.get_authorization(session, authorization_id, lock=True)
    if auth is None:
        raise NotFound(
            "AUTHORIZATION_NOT_FOUND",
            f"no authorization {authorization_id}",
            resource_type="authorization",
            resource_name=authorization_id,
        )
    if auth.state != AUTHORIZED:
        reason, what = _RESOLVED[auth.state]
        raise FailedPrecondition(
            reason,
            f"authorization {authorization_id} {what}",
            violations=[("AUTHORIZATION_STATE", authorization_id, what)],
        )
    return auth


async def _resolve(
    session: AsyncSession,
    now: datetime,
    auth: AuthorizationRow,
    op: ledger.Op,
    state: int,
    void_reason: int,
) -> Resolution:
    transfer_id: str | None = None
    if auth.pending_transfer_id is not None:
        pending = await store.get_transfer(session, auth.pending_transfer_id)
        assert pending is not None and auth.account_id is not None
        wallet = await store.get_account(session, auth.account_id, lock=True)
        revenue = await store.get_account(session, pending.credit_account_id, lock=True)
        assert wallet is not None and revenue is not None
        done = await transfers.execute(
            session,
            op,
            wallet,
            revenue,
            pending.amount,
            now,
            kind=pb.TRANSFER_KIND_MESSAGE_CHARGE,
            pending_id=pending.id,
            category=pending.category,
            recipient_country=pending.recipient_country,
            reference=auth.id,
        )
        transfer_id = done.transfer_id
    await store.resolve_authorization(
        session, auth.id, state=state, transfer_id=transfer_id, void_reason=void_reason, now=now
    )
    return Resolution(auth.id, state, auth.amount, auth.currency, transfer_id or "")


def _not_expired(auth: AuthorizationRow, now: datetime) -> None:
    # Past its expire_time an authorization is expired whether or not the sweep has voided
    # it yet, so the answer does not depend on when the sweep last ran.
    if now >= auth.expire_time:
        raise FailedPrecondition(
            "AUTHORIZATION_EXPIRED",
            f"authorization {auth.id} passed its expire_time",
            violations=[("AUTHORIZATION_STATE", auth.id, "expired")],
        )


async def capture(session: AsyncSession, now: datetime, authorization_id: str) -> Resolution:
    auth = await _locked_open(session, authorization_id)
    _not_expired(auth, now)
    return await _resolve(session, now, auth, ledger.Op.POST_PENDING, CAPTURED, 0)


async def void(
    session: AsyncSession, now: datetime, authorization_id: str, reason: int
) -> Resolution:
    auth = await _locked_open(session, authorization_id)
    _not_expired(auth, now)
    return await _resolve(session, now, auth, ledger.Op.VOID_PENDING, VOIDED, reason)


async def expire_one(session: AsyncSession, now: datetime, authorization_id: str) -> bool:
    """Void one authorization past its timeout; False when someone resolved it first."""
    auth = await store.get_authorization(session, authorization_id, lock=True)
    if auth is None or auth.state != AUTHORIZED or auth.expire_time > now:
        return False
    await _resolve(session, now, auth, ledger.Op.VOID_PENDING, EXPIRED, pb.VOID_REASON_EXPIRED)
    return True


@dataclass(frozen=True)
class AdCharge:
    transfer_id: str
    amount: int
    currency: str


async def charge_ad_event(
    session: AsyncSession,
    now: datetime,
    *,
    event_id: str,
    campaign_id: str,
    account_id: str,
    kind: int,
    amount: int,
    currency: str,
) -> AdCharge:
    account = await store.get_account(session, account_id, lock=True)
    if account is None:
        raise NotFound(
            "ACCOUNT_NOT_FOUND",
            f"no account {account_id}",
            resource_type="account",
            resource_name=account_id,
        )
    if account.kind != pb.ACCOUNT_KIND_ADVERTISER_WALLET:
        raise InvalidArgument([("account_id", "must be an advertiser wallet")])
    if account.currency != currency:
        raise InvalidArgument(
            [("amount.currency_code", f"must be the account's currency {account.currency}")]
        )
    revenue = await _revenue(session, currency, now)
    done = await transfers.execute(
        session,
        ledger.Op.POSTED,
        account,
        revenue,
        amount,
        now,
        kind=pb.TRANSFER_KIND_AD_CHARGE,
        campaign_id=campaign_id,
        ad_event_kind=kind,
        reference=event_id,
    )
    return AdCharge(done.transfer_id, amount, currency)
