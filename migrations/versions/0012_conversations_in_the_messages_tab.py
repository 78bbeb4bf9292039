"""Conversations in the Messages tab: who was greeted there, and which DM conversations got
their title and suggested prompts (each once).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dm_greeting",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("greeted_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_dm_greeting")),
    )
    op.create_table(
        "dm_conversation",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("thread_ts", sa.String(length=32), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint(
            "team_id", "channel_id", "thread_ts", name=op.f("pk_dm_conversation")
        ),
    )


def downgrade() -> None:
    op.drop_table("dm_conversation")
    op.drop_table("dm_greeting")
