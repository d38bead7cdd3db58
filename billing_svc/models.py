"""Billing tables: accounts with TigerBeetle-style balance columns, an immutable transfers
table, authorizations (the mutable state of two-phase message charges) and rate cards.

Enum columns hold the protobuf enum numbers; money columns hold int64 micros.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, SmallInteger, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bizmsg.kit.idempotency import idempotency_table
from bizmsg.kit.storage import UTCDateTime

# AccountKind.ACCOUNT_KIND_BUSINESS_WALLET; a partial unique index keeps one wallet per business.
BUSINESS_WALLET_KIND = 1


class Base(DeclarativeBase):
    pass


idempotency = idempotency_table(Base.metadata)


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(160))
    kind: Mapped[int] = mapped_column(SmallInteger)
    currency: Mapped[str] = mapped_column(String(3))
    credit_limit: Mapped[int] = mapped_column(BigInteger)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    # Platform revenue may be split over several accounts per currency (one hot row would
    # serialise every charge on PostgreSQL); 0 for every other account.
    shard: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")

    __table_args__ = (
        # System accounts (revenue, settlement) are found by (owner, kind, currency, shard).
        Index("ix_accounts_owner_kind_currency", "owner", "kind", "currency", "shard", unique=True),
        Index(
            "ux_accounts_business_wallet",
            "owner",
            unique=True,
            sqlite_where=text(f"kind = {BUSINESS_WALLET_KIND}"),
            postgresql_where=text(f"kind = {BUSINESS_WALLET_KIND}"),
        ),
    )


class TransferRow(Base):
    """Never updated or deleted: balances are derived from these rows."""

    __tablename__ = "transfers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    debit_account_id: Mapped[str] = mapped_column(String(36))
    credit_account_id: Mapped[str] = mapped_column(String(36))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    kind: Mapped[int] = mapped_column(SmallInteger)
    pending: Mapped[bool] = mapped_column(Boolean, default=False)
    post_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    void_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # Unique: a pending transfer is posted or voided at most once.
    pending_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    category: Mapped[int] = mapped_column(SmallInteger, default=0)
    recipient_country: Mapped[str] = mapped_column(String(2), default="")
    campaign_id: Mapped[str] = mapped_column(String(128), default="")
    ad_event_kind: Mapped[int] = mapped_column(SmallInteger, default=0)
    reference: Mapped[str] = mapped_column(String(200), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_transfers_debit_time", "debit_account_id", "create_time", "id"),
        Index("ix_transfers_credit_time", "credit_account_id", "create_time", "id"),
        Index("ux_transfers_pending_id", "pending_id", unique=True),
    )


class AuthorizationRow(Base):
    __tablename__ = "authorizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    business_id: Mapped[str] = mapped_column(String(128))
    # None for a free message of a business without a wallet.
    account_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    pending_transfer_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    resolve_transfer_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    category: Mapped[int] = mapped_column(SmallInteger)
    recipient_country: Mapped[str] = mapped_column(String(2))
    window: Mapped[int] = mapped_column(SmallInteger)
    rule: Mapped[int] = mapped_column(SmallInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    rate_card_version: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    void_reason: Mapped[int] = mapped_column(SmallInteger, default=0)
    expire_time: Mapped[datetime] = mapped_column(UTCDateTime)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    resolve_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # The expiry sweep asks for unresolved authorizations past their expire_time.
    __table_args__ = (Index("ix_authorizations_state_expire", "state", "expire_time"),)


class RateCardRow(Base):
    __tablename__ = "rate_cards"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    version: Mapped[int] = mapped_column(BigInteger)
    effective_time: Mapped[datetime] = mapped_column(UTCDateTime)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ux_rate_cards_currency_version", "currency", "version", unique=True),
        Index("ix_rate_cards_currency_effective", "currency", "effective_time", "version"),
    )


class RatePriceRow(Base):
    __tablename__ = "rate_card_prices"

    rate_card_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    category: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    # "" prices every country without its own entry.
    recipient_country: Mapped[str] = mapped_column(String(2), primary_key=True)
    price: Mapped[int] = mapped_column(BigInteger)
