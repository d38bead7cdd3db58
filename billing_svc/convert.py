"""Domain rows and results to protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from billing_svc import charges, ledger, rates, statements, store
from billing_svc.models import AccountRow, TransferRow
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.timeutil import to_timestamp

Resolved = TypeVar("Resolved", pb.CaptureChargeResponse, pb.VoidChargeResponse)


def money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_micros=amount, currency_code=currency)


def account(row: AccountRow, b: ledger.Balances | None = None) -> pb.Account:
    b = b or store.balances(row)
    c = row.currency
    return pb.Account(
        account_id=row.id,
        owner=row.owner,
        kind=row.kind,  # type: ignore[arg-type]
        currency_code=c,
        credit_limit=money(b.credit_limit, c),
        credits_posted=money(b.credits_posted, c),
        debits_posted=money(b.debits_posted, c),
        debits_pending=money(b.debits_pending, c),
        credits_pending=money(b.credits_pending, c),
        available=money(b.available, c),
        create_time=to_timestamp(row.create_time),
    )


def transfer(row: TransferRow) -> pb.Transfer:
    return pb.Transfer(
        transfer_id=row.id,
        debit_account_id=row.debit_account_id,
        credit_account_id=row.credit_account_id,
        amount=money(row.amount, row.currency),
        kind=row.kind,  # type: ignore[arg-type]
        pending=row.pending,
        post_pending=row.post_pending,
        void_pending=row.void_pending,
        pending_id=row.pending_id or "",
        category=row.category,  # type: ignore[arg-type]
        recipient_country=row.recipient_country,
        campaign_id=row.campaign_id,
        ad_event_kind=row.ad_event_kind,  # type: ignore[arg-type]
        reference=row.reference,
        create_time=to_timestamp(row.create_time),
    )


def rate_card(card: rates.Card) -> pb.RateCard:
    c = card.row.currency
    return pb.RateCard(
        rate_card_id=card.row.id,
        currency_code=c,
        version=card.row.version,
        effective_time=to_timestamp(card.row.effective_time),
        create_time=to_timestamp(card.row.create_time),
        entries=[
            pb.RateCardEntry(
                category=p.category,  # type: ignore[arg-type]
                recipient_country=p.recipient_country,
                price=money(p.price, c),
            )
            for p in card.prices
        ],
    )


def authorization(a: charges.Authorization) -> pb.AuthorizeChargeResponse:
    return pb.AuthorizeChargeResponse(
        authorization_id=a.id,
        price=money(a.amount, a.currency),
        free=a.amount == 0,
        rule=a.rule,  # type: ignore[arg-type]
        state=a.state,  # type: ignore[arg-type]
        expire_time=to_timestamp(a.expire_time),
        account_id=a.account_id,
        pending_transfer_id=a.pending_transfer_id,
        rate_card_version=a.rate_card_version,
    )


def resolution(response_type: type[Resolved], r: charges.Resolution) -> Resolved:
    """A CaptureChargeResponse or VoidChargeResponse (the same fields)."""
    return response_type(
        authorization_id=r.authorization_id,
        state=r.state,  # type: ignore[arg-type]
        amount=money(r.amount, r.currency),
        transfer_id=r.transfer_id,
    )


def statement_lines(lines: Sequence[statements.Line], currency: str) -> list[pb.StatementLine]:
    return [
        pb.StatementLine(
            kind=line.kind,  # type: ignore[arg-type]
            category=line.category,  # type: ignore[arg-type]
            recipient_country=line.recipient_country,
            ad_event_kind=line.ad_event_kind,  # type: ignore[arg-type]
            count=line.count,
            debits=money(line.debits, currency),
            credits=money(line.credits, currency),
        )
        for line in lines
    ]
