"""Initial schema: campaigns, targets, impressions, clicks, daily stats, locks, idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bizmsg.kit.storage import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("advertiser_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("business_id", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("headline", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("media_uri", sa.String(2048), nullable=False),
        sa.Column("call_to_action", sa.Integer, nullable=False),
        sa.Column("countries", sa.Text, nullable=False),
        sa.Column("languages", sa.Text, nullable=False),
        sa.Column("interests", sa.Text, nullable=False),
        sa.Column("bid_type", sa.Integer, nullable=False),
        sa.Column("bid_micros", sa.BigInteger, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("daily_budget_micros", sa.BigInteger, nullable=False),
        sa.Column("lifetime_budget_micros", sa.BigInteger, nullable=False),
        sa.Column("start_time", UTCDateTime, nullable=False),
        sa.Column("end_time", UTCDateTime, nullable=True),
        sa.Column("cap_max_impressions", sa.Integer, nullable=False),
        sa.Column("cap_period_days", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("spend_micros", sa.BigInteger, nullable=False),
        sa.Column("spend_day", sa.String(10), nullable=False),
        sa.Column("spend_day_micros", sa.BigInteger, nullable=False),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("clicks", sa.BigInteger, nullable=False),
        sa.Column("unfunded_until", UTCDateTime, nullable=True),
        sa.Column("create_time", UTCDateTime, nullable=False),
        sa.Column("update_time", UTCDateTime, nullable=False),
    )
    op.create_index("ix_campaigns_advertiser", "campaigns", ["advertiser_id", "id"])

    op.create_table(
        "campaign_targets",
        sa.Column("country", sa.String(2), primary_key=True),
        sa.Column("language", sa.String(8), primary_key=True),
        sa.Column("campaign_id", sa.String(40), primary_key=True),
    )
    op.create_index("ix_campaign_targets_campaign", "campaign_targets", ["campaign_id"])

    op.create_table(
        "impressions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("campaign_id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("person_id", sa.String(128), nullable=False),
        sa.Column("business_id", sa.String(128), nullable=False),
        sa.Column("placement", sa.Integer, nullable=False),
        sa.Column("serve_time", UTCDateTime, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("price_micros", sa.BigInteger, nullable=False),
        sa.Column("click_price_micros", sa.BigInteger, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
    )
    op.create_index(
        "ix_impressions_person", "impressions", ["person_id", "campaign_id", "serve_time"]
    )
    op.create_index("ix_impressions_state", "impressions", ["state", "serve_time"])

    op.create_table(
        "clicks",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("impression_id", sa.String(40), nullable=False, unique=True),
        sa.Column("campaign_id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("person_id", sa.String(128), nullable=False),
        sa.Column("business_id", sa.String(128), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("price_micros", sa.BigInteger, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
    )
    op.create_index("ix_clicks_state", "clicks", ["state", "create_time"])

    op.create_table(
        "campaign_daily_stats",
        sa.Column("campaign_id", sa.String(40), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("clicks", sa.BigInteger, nullable=False),
        sa.Column("spend_micros", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "person_locks",
        sa.Column("person_id", sa.String(128), primary_key=True),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(160), primary_key=True),
        sa.Column("method", sa.String(80), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "person_locks",
        "campaign_daily_stats",
        "clicks",
        "impressions",
        "campaign_targets",
        "campaigns",
    ):
        op.drop_table(table)
