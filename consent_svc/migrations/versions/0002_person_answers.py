"""Replay store for service:delivery's calls about a person, erasable with the person.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "person_answers",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("person_hash", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    # ErasePerson deletes a person's rows by this index.
    op.create_index("ix_person_answers_person_hash", "person_answers", ["person_hash"])


def downgrade() -> None:
    op.drop_index("ix_person_answers_person_hash", table_name="person_answers")
    op.drop_table("person_answers")
