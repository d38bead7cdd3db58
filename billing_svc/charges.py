"""Message charges (authorize -> capture | void | expire) and ad charges.

An authorization is the mutable record of a two-phase charge; the money moves only through
immutable transfers: a pending one at authorization, then exactly one post_pending or
void_pending transfer (the unique pending_id index is the last line of defence).
A free message gets an authorization too, with no transfer, so delivery handles every
message the same way.

The hot path sends one statement per row it touches and reads nothing first (account
identities and rate cards come from per-process caches that are proven current inside the
writes, see directory and cardcache). Authorize: the pending transfer, the authorization,
the request_id claim, then the wallet reservation and the revenue account. Capture and
void: the authorization moved out of AUTHORIZED by one UPDATE ... RETURNING (which also
locks it and reads what the transfer needs), the transfer, the claim, then wallet and
revenue. The contended rows come last, so their locks are held for two statements and the
commit. In a group commit of several authorizations, everything but the claim waits for
just before the commit, where each table and each account row gets one statement for the
whole batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncConnection

from billing_svc import cardcache, ledger, postings, pricing, store
from billing_svc.cardcache import RateCards
from billing_svc.directory import Directory
from billing_svc.once import Retry
from billing_svc.postings import Side
from billing_svc.pricing import Quote
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
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


Claim = Callable[[Any], Awaitable[None]]


async def _no_claim(_: Any) -> None:
    return None


async def authorize(
    conn: AsyncConnection,
    now: datetime,
    directory: Directory,
    cards: RateCards,
    *,
    business_id: str,
    recipient_country: str,
    category: int,
    window: int,
    hold: timedelta,
    claim: Claim = _no_claim,
) -> Authorization:
    """Price the message and reserve the price on the business wallet.

    `claim` is called with the result once the rows are queued and before the wallet and
    revenue rows are locked (the idempotency key), so those locks are held for two
    statements and the commit only. In a group commit of several works, the transfer and
    authorization rows go in with the other works' (nothing in the transaction reads them
    back) and the wallet's and revenue account's amounts are summed (postings.reserve_later):
    one statement per table and per account row for the batch, just before the commit.
    """
    q = await pricing.quote(
        conn,
        now,
        directory,
        cards,
        business_id=business_id,
        recipient_country=recipient_country,
        category=category,
        window=window,
        check_later=True,
    )
    auth_id = new_id()
    expire_time = now + hold
    wallet_id = q.wallet.id if q.wallet is not None else None
    pending_id: str | None = None
    revenue_id = ""
    if not q.free:
        assert wallet_id is not None  # pricing refuses a charged message without a wallet
        ledger.check_shape(q.currency, q.currency, q.amount)
        revenue_id = await directory.revenue_account(conn, q.currency, wallet_id, now)
        pending_id = new_id()
        await store.insert_transfer(
            conn,
            later=True,
            id=pending_id,
            debit_account_id=wallet_id,
            credit_account_id=revenue_id,
            amount=q.amount,
            currency=q.currency,
            kind=pb.TRANSFER_KIND_MESSAGE_CHARGE,
            pending=True,
            category=category,
            recipient_country=recipient_country,
            reference=auth_id,
            create_time=now,
        )
    await store.insert_authorization(
        conn,
        later=True,
        id=auth_id,
        business_id=business_id,
        account_id=wallet_id,
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
    auth = Authorization(
        auth_id,
        q.amount,
        q.currency,
        q.rule,
        AUTHORIZED,
        expire_time,
        wallet_id or "",
        pending_id or "",
        q.rate_card_version,
    )
    await claim(auth)
    if wallet_id is not None and pending_id is not None:
        await _reserve(conn, cards, wallet_id, q)
        if not postings.credit_pending_later(conn, revenue_id, q.amount):
            await postings.post(conn, ledger.Op.PENDING, Side.CREDIT, revenue_id, q.amount)
    return auth


async def _reserve(conn: AsyncConnection, cards: RateCards, wallet_id: str, q: Quote) -> None:
    """The debit side of the pending transfer, in the statement that also proves the price's
    rate card still the newest; a stale cache rolls the call back to run again. In a group
    commit, with the batch's other reservations of the wallet just before the commit."""
    if postings.reserve_later(conn, wallet_id, q.amount, q.currency, q.cards_latest):
        return
    if await postings.try_reserve(conn, wallet_id, q.amount, q.currency, q.cards_latest):
        return
    if await cardcache.latest_version(conn, q.currency) != q.cards_latest:
        cards.forget(q.currency)
        raise Retry
    await postings.post_locked(conn, ledger.Op.PENDING, Side.DEBIT, wallet_id, q.amount)


async def _explain(conn: AsyncConnection, now: datetime, authorization_id: str) -> NoReturn:
    """Why an authorization could not be resolved: missing, resolved before, or expired."""
    auth = await store.get_authorization(conn, authorization_id)
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
    if now >= auth.expire_time:
        # Past its expire_time an authorization is expired whether or not the sweep has
        # voided it yet, so the answer does not depend on when the sweep last ran.
        raise FailedPrecondition(
            "AUTHORIZATION_EXPIRED",
            f"authorization {authorization_id} passed its expire_time",
            violations=[("AUTHORIZATION_STATE", authorization_id, "expired")],
        )
    raise Aborted("CONFLICT", f"authorization {authorization_id} changed meanwhile; retry")


async def _resolve(
    conn: AsyncConnection,
    now: datetime,
    authorization_id: str,
    op: ledger.Op,
    state: int,
    void_reason: int,
    *,
    expired: bool,
    claim: Claim = _no_claim,
) -> Resolution | None:
    """Resolve an open authorization (None when it is not open, or not (yet) expired as
    `expired` asks): one statement moves and locks it, then the post or void transfer."""
    transfer_id = new_id()
    row = await store.resolve_open(
        conn,
        authorization_id,
        open_state=AUTHORIZED,
        state=state,
        void_reason=void_reason,
        transfer_id=transfer_id,
        now=now,
        expired=expired,
    )
    if row is None:
        return None
    charged = row.pending_transfer_id is not None
    if charged:
        await store.insert_transfer(
            conn,
            id=transfer_id,
            debit_account_id=row.account_id,
            credit_account_id=row.credit_account_id,
            amount=row.amount,
            currency=row.currency,
            kind=pb.TRANSFER_KIND_MESSAGE_CHARGE,
            post_pending=op is ledger.Op.POST_PENDING,
            void_pending=op is ledger.Op.VOID_PENDING,
            pending_id=row.pending_transfer_id,
            category=row.category,
            recipient_country=row.recipient_country,
            reference=authorization_id,
            create_time=now,
        )
    done = Resolution(
        authorization_id, state, row.amount, row.currency, transfer_id if charged else ""
    )
    await claim(done)
    if charged:
        # Customer account first, then the platform's: the one lock order everywhere.
        await postings.post(conn, op, Side.DEBIT, row.account_id, row.amount)
        await postings.post(conn, op, Side.CREDIT, row.credit_account_id, row.amount)
    return done


async def capture(
    conn: AsyncConnection, now: datetime, authorization_id: str, claim: Claim = _no_claim
) -> Resolution:
    done = await _resolve(
        conn,
        now,
        authorization_id,
        ledger.Op.POST_PENDING,
        CAPTURED,
        0,
        expired=False,
        claim=claim,
    )
    if done is None:
        await _explain(conn, now, authorization_id)
    return done


async def void(
    conn: AsyncConnection,
    now: datetime,
    authorization_id: str,
    reason: int,
    claim: Claim = _no_claim,
) -> Resolution:
    done = await _resolve(
        conn,
        now,
        authorization_id,
        ledger.Op.VOID_PENDING,
        VOIDED,
        reason,
        expired=False,
        claim=claim,
    )
    if done is None:
        await _explain(conn, now, authorization_id)
    return done


async def expire_one(conn: AsyncConnection, now: datetime, authorization_id: str) -> bool:
    """Void one authorization past its timeout; False when someone resolved it first."""
    done = await _resolve(
        conn,
        now,
        authorization_id,
        ledger.Op.VOID_PENDING,
        EXPIRED,
        pb.VOID_REASON_EXPIRED,
        expired=True,
    )
    return done is not None


@dataclass(frozen=True)
class AdCharge:
    transfer_id: str
    amount: int
    currency: str


async def charge_ad_event(
    conn: AsyncConnection,
    now: datetime,
    directory: Directory,
    *,
    event_id: str,
    campaign_id: str,
    account_id: str,
    kind: int,
    amount: int,
    currency: str,
) -> AdCharge:
    account = await directory.account(conn, account_id)
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
    ledger.check_shape(currency, currency, amount)
    revenue_id = await directory.revenue_account(conn, currency, account_id, now)
    transfer_id = new_id()
    await store.insert_transfer(
        conn,
        later=True,
        id=transfer_id,
        debit_account_id=account_id,
        credit_account_id=revenue_id,
        amount=amount,
        currency=currency,
        kind=pb.TRANSFER_KIND_AD_CHARGE,
        campaign_id=campaign_id,
        ad_event_kind=kind,
        reference=event_id,
        create_time=now,
    )
    # In a group commit, the batch's charges of one wallet (and of the revenue account) go
    # in as one sum each, just before the commit.
    for side, account_id_ in ((Side.DEBIT, account_id), (Side.CREDIT, revenue_id)):
        if not postings.post_later(conn, side, account_id_, amount):
            await postings.post(conn, ledger.Op.POSTED, side, account_id_, amount)
    return AdCharge(transfer_id, amount, currency)
