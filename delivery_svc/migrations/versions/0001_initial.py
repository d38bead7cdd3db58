"""Initial delivery schema: key directory, messages, envelopes, status events, outbox, limits.

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

# SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


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
        "devices",
        sa.Column("owner", sa.String(160), primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("identity_key", sa.LargeBinary, nullable=False),
        sa.Column("signed_pre_key", sa.LargeBinary, nullable=False),
        sa.Column("signed_pre_key_signature", sa.LargeBinary, nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False),
        sa.Column("update_time", UTCDateTime, nullable=False),
    )
    op.create_table(
        "one_time_pre_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(160), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("owner", "device_id", "public_key", name="uq_one_time_pre_keys_key"),
    )
    op.create_index(
        "ix_one_time_pre_keys_device", "one_time_pre_keys", ["owner", "device_id", "id"]
    )
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("sender", sa.String(160), nullable=False),
        sa.Column("sender_device_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(160), nullable=False),
        sa.Column("category", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("send_time", UTCDateTime, nullable=False),
        sa.Column("expire_time", UTCDateTime, nullable=False),
        sa.Column("status_time", UTCDateTime, nullable=False),
        sa.Column("window_kind", sa.Integer, nullable=False),
        sa.Column("authorization_id", sa.String(64), nullable=False),
        sa.Column("price_micros", sa.BigInteger, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("free", sa.Boolean, nullable=False),
        sa.Column("referral_click_id", sa.String(128), nullable=False),
        sa.Column("referral_campaign_id", sa.String(128), nullable=False),
    )
    op.create_index("ix_messages_due", "messages", ["status", "expire_time"])
    op.create_index("ix_messages_recipient", "messages", ["recipient", "message_id"])
    op.create_table(
        "envelopes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("recipient", sa.String(160), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("expire_time", UTCDateTime, nullable=False),
        sa.UniqueConstraint("message_id", "device_id", name="uq_envelopes_message_device"),
    )
    op.create_index("ix_envelopes_mailbox", "envelopes", ["recipient", "device_id", "id"])
    op.create_index("ix_envelopes_expiry", "envelopes", ["expire_time"])
    op.create_table(
        "senders",
        sa.Column("sender", sa.String(160), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "status_events",
        sa.Column("sender", sa.String(160), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("recipient", sa.String(160), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("event_time", UTCDateTime, nullable=False),
        sa.Column("reason", sa.String(80), nullable=False),
    )
    op.create_index("ix_status_events_message", "status_events", ["message_id"])
    op.create_table(
        "outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_time", UTCDateTime, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=False),
    )
    op.create_index("ix_outbox_due", "outbox", ["next_attempt_time"])
    op.create_table(
        "business_limits",
        sa.Column("business_id", sa.String(128), primary_key=True),
        sa.Column("messages_per_second", sa.Integer, nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("update_time", UTCDateTime, nullable=False),
    )
    op.create_table(
        "rate_counters",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("window_start", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_index("ix_rate_counters_window", "rate_counters", ["window_start"])
    op.create_table(
        "conversation_starts",
        sa.Column("business_id", sa.String(128), primary_key=True),
        sa.Column("person_id", sa.String(128), primary_key=True),
        sa.Column("start_time", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_conversation_starts_recent", "conversation_starts", ["business_id", "start_time"]
    )


def downgrade() -> None:
    for table in (
        "conversation_starts",
        "rate_counters",
        "business_limits",
        "outbox",
        "status_events",
        "senders",
        "envelopes",
        "messages",
        "one_time_pre_keys",
        "devices",
        "idempotency_keys",
    ):
        op.drop_table(table)
