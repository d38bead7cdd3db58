"""Initial billing schema: accounts, transfers, authorizations, rate cards, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bizmsg.kit.storage import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUSINESS_WALLET = sa.text("kind = 1")


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(160), primary_key=True),
        sa.Column("method", sa.String(80), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(160), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("credit_limit", sa.BigInteger, nullable=False),
        sa.Column("credits_posted", sa.BigInteger, nullable=False),
        sa.Column("debits_posted", sa.BigInteger, nullable=False),
        sa.Column("debits_pending", sa.BigInteger, nullable=False),
        sa.Column("credits_pending", sa.BigInteger, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_accounts_owner_kind_currency", "accounts", ["owner", "kind", "currency"], unique=True
    )
    op.create_index(
        "ux_accounts_business_wallet",
        "accounts",
        ["owner"],
        unique=True,
        sqlite_where=BUSINESS_WALLET,
        postgresql_where=BUSINESS_WALLET,
    )
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("debit_account_id", sa.String(36), nullable=False),
        sa.Column("credit_account_id", sa.String(36), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("post_pending", sa.Boolean, nullable=False),
        sa.Column("void_pending", sa.Boolean, nullable=False),
        sa.Column("pending_id", sa.String(36), nullable=True),
        sa.Column("category", sa.SmallInteger, nullable=False),
        sa.Column("recipient_country", sa.String(2), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("ad_event_kind", sa.SmallInteger, nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_transfers_debit_time", "transfers", ["debit_account_id", "create_time", "id"]
    )
    op.create_index(
        "ix_transfers_credit_time", "transfers", ["credit_account_id", "create_time", "id"]
    )
    op.create_index("ux_transfers_pending_id", "transfers", ["pending_id"], unique=True)
    op.create_table(
        "authorizations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("business_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=True),
        sa.Column("pending_transfer_id", sa.String(36), nullable=True),
        sa.Column("resolve_transfer_id", sa.String(36), nullable=True),
        sa.Column("category", sa.SmallInteger, nullable=False),
        sa.Column("recipient_country", sa.String(2), nullable=False),
        sa.Column("window", sa.SmallInteger, nullable=False),
        sa.Column("rule", sa.SmallInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("rate_card_version", sa.BigInteger, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("void_reason", sa.SmallInteger, nullable=False),
        sa.Column("expire_time", UTCDateTime, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
        sa.Column("resolve_time", UTCDateTime, nullable=True),
    )
    op.create_index("ix_authorizations_state_expire", "authorizations", ["state", "expire_time"])
    op.create_table(
        "rate_cards",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("effective_time", UTCDateTime, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ux_rate_cards_currency_version", "rate_cards", ["currency", "version"], unique=True
    )
    op.create_index(
        "ix_rate_cards_currency_effective",
        "rate_cards",
        ["currency", "effective_time", "version"],
    )
    op.create_table(
        "rate_card_prices",
        sa.Column("rate_card_id", sa.String(36), primary_key=True),
        sa.Column("category", sa.SmallInteger, primary_key=True),
        sa.Column("recipient_country", sa.String(2), primary_key=True),
        sa.Column("price", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "rate_card_prices",
        "rate_cards",
        "authorizations",
        "transfers",
        "accounts",
        "idempotency_keys",
    ):
        op.drop_table(table)
