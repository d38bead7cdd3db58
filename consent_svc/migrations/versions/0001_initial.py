"""Initial consent schema.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(160), primary_key=True),
        sa.Column("method", sa.String(80), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", TS, nullable=False),
    )
    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("create_time", TS, nullable=False),
    )
    op.create_table(
        "persons",
        sa.Column("person_hash", sa.String(64), primary_key=True),
        sa.Column("history_id", sa.String(36), nullable=False, unique=True),
        sa.Column("data_key", sa.LargeBinary, nullable=False),
        sa.Column("ads_enabled", sa.Boolean, nullable=False),
        sa.Column("ads_interests", sa.LargeBinary, nullable=True),
        sa.Column("ads_update_time", TS, nullable=True),
        sa.Column("create_time", TS, nullable=False),
    )
    op.create_table(
        "histories",
        sa.Column("history_id", sa.String(36), primary_key=True),
        sa.Column("head_sequence", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.LargeBinary, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("erase_time", TS, nullable=True),
    )
    op.create_table(
        "history_events",
        sa.Column(
            "history_id",
            sa.String(36),
            sa.ForeignKey("histories.history_id"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.Integer, nullable=False),
        sa.Column("event_time", TS, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    # The primary key (person_hash, business_id) serves CheckConsent and ListConsents.
    op.create_table(
        "relations",
        sa.Column("person_hash", sa.String(64), primary_key=True),
        sa.Column("business_id", sa.String(128), primary_key=True),
        sa.Column("consent_id", sa.String(36), nullable=True),
        sa.Column("consent_version", sa.BigInteger, nullable=False),
        sa.Column("granted", sa.Integer, nullable=False),
        sa.Column("revoked", sa.Integer, nullable=False),
        sa.Column("consent_expire_time", TS, nullable=True),
        sa.Column("consent_details", sa.LargeBinary, nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("block_time", TS, nullable=True),
        sa.Column("last_user_message_time", TS, nullable=True),
        sa.Column("service_expire_time", TS, nullable=True),
        sa.Column("entry_expire_time", TS, nullable=True),
        sa.Column("entry_referral", sa.LargeBinary, nullable=True),
        sa.Column("free_entry_expire_time", TS, nullable=True),
        sa.Column("update_time", TS, nullable=False),
    )
    op.create_table(
        "erasure_answers",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "erasure_answers",
        "relations",
        "history_events",
        "histories",
        "persons",
        "service_keys",
        "idempotency_keys",
    ):
        op.drop_table(table)
