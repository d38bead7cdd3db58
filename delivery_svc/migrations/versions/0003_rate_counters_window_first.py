"""rate_counters keyed (window_start, key), with no separate index on window_start.

One index serves both the sends' lookups and the sweep of old windows, so PostgreSQL's
cached generic plan of the send's read cannot pick the window index and scan a whole window
(as it did when planned on a new deployment's empty table); each bump writes one b-tree. On
SQLite, which cannot change a primary key in place, the table is made again WITHOUT ROWID
with its rows copied.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _copy_into_new_table(key_columns: list[str], *, with_rowid: bool) -> None:
    op.create_table(
        "rate_counters_new",
        sa.Column("window_start", sa.BigInteger, nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint(*key_columns),
        sqlite_with_rowid=with_rowid,
    )
    op.execute(
        "INSERT INTO rate_counters_new (window_start, key, count) "
        "SELECT window_start, key, count FROM rate_counters"
    )
    op.drop_table("rate_counters")
    op.rename_table("rate_counters_new", "rate_counters")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _copy_into_new_table(["window_start", "key"], with_rowid=False)
        return
    op.drop_index("ix_rate_counters_window", table_name="rate_counters")
    op.drop_constraint("rate_counters_pkey", "rate_counters", type_="primary")
    op.create_primary_key("rate_counters_pkey", "rate_counters", ["window_start", "key"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _copy_into_new_table(["key", "window_start"], with_rowid=True)
    else:
        op.drop_constraint("rate_counters_pkey", "rate_counters", type_="primary")
        op.create_primary_key("rate_counters_pkey", "rate_counters", ["key", "window_start"])
    op.create_index("ix_rate_counters_window", "rate_counters", ["window_start"])
