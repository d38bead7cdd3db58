"""Drop ix_messages_recipient: no query reads messages by recipient (mailboxes read envelopes,
by their own index), and every send paid for keeping it up to date.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_messages_recipient", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_recipient", "messages", ["recipient", "message_id"])
