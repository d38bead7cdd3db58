"""campaign_targets.rank_hint and an index (country, language, rank_hint, campaign_id).

ServeAd's candidates are the best-scoring campaigns targeting a country and language. The
score's estimate was computed from the campaign's row for every matching campaign and sorted
on each serve, so a serve's read grew with the number of campaigns in the country (10,000 of
them: about 1 ms of a serve's CPU on SQLite). Kept on each target row (store.refresh_rank, in
the transaction that changes what it is computed from), the best ones are read in index order,
a page's worth of rows. Existing rows get their campaign's estimate (-1 for a paused one:
store.RETIRED_RANK).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# store._KEPT_RANK as it stands at this revision: the estimate (BID_TYPE_CPM is 1) of an
# active campaign (CAMPAIGN_STATUS_ACTIVE is 1), -1 for a paused one.
_ESTIMATE = """
    SELECT CASE WHEN c.status != 1 THEN -1.0
           WHEN c.bid_type = 1 THEN CAST(c.bid_micros AS FLOAT)
           ELSE CAST(c.bid_micros AS FLOAT) * ((CAST(c.clicks AS FLOAT) + 1.0)
                / (CAST(c.impressions AS FLOAT) + 50.0)) * 1000.0 END
    FROM campaigns c WHERE c.id = campaign_targets.campaign_id
"""


def upgrade() -> None:
    op.add_column(
        "campaign_targets",
        sa.Column("rank_hint", sa.Float, nullable=False, server_default="0"),
    )
    op.execute(f"UPDATE campaign_targets SET rank_hint = ({_ESTIMATE})")
    op.create_index(
        "ix_campaign_targets_rank",
        "campaign_targets",
        ["country", "language", "rank_hint", "campaign_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_campaign_targets_rank", table_name="campaign_targets")
    with op.batch_alter_table("campaign_targets") as batch:
        batch.drop_column("rank_hint")
