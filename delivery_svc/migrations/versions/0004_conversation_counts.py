"""conversation_counts: a business's new conversations per hour, filled from the starts kept.

The unique-people limit sums a day of these (delivery_svc.store.people_since) instead of
counting the day's conversation_starts on every new conversation. Every start kept goes into
its hour's count; the delivery relay drops hours older than the period.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The start's hour as epoch seconds: SQLite keeps the UTC time as text.
_HOUR = {
    "sqlite": "CAST(strftime('%s', start_time) AS INTEGER) / 3600 * 3600",
    "postgresql": "CAST(floor(extract(epoch FROM start_time) / 3600) AS BIGINT) * 3600",
}


def upgrade() -> None:
    op.create_table(
        "conversation_counts",
        sa.Column("business_id", sa.String(128), primary_key=True),
        sa.Column("hour_start", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_index("ix_conversation_counts_hour", "conversation_counts", ["hour_start"])
    hour = _HOUR[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO conversation_counts (business_id, hour_start, count) "
        f"SELECT business_id, {hour}, count(*) FROM conversation_starts "
        f"GROUP BY business_id, {hour}"
    )


def downgrade() -> None:
    op.drop_table("conversation_counts")
