"""Platform revenue split over shard accounts: a shard column, part of the system-account key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("shard", sa.SmallInteger, nullable=False, server_default="0"),
    )
    op.drop_index("ix_accounts_owner_kind_currency", table_name="accounts")
    op.create_index(
        "ix_accounts_owner_kind_currency",
        "accounts",
        ["owner", "kind", "currency", "shard"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_accounts_owner_kind_currency", table_name="accounts")
    op.create_index(
        "ix_accounts_owner_kind_currency", "accounts", ["owner", "kind", "currency"], unique=True
    )
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("shard")
