"""Adaptive cache TTL: the gap before a thread's last request, the thread's 1-hour anchor entry,
and each workspace's habits (what followed a request, by the gap before it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 13:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("thread_state", schema=None) as batch:
        batch.add_column(sa.Column("last_gap_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("anchor_ts", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("anchor_digest", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("anchor_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("anchor_at", TZ, nullable=True))
    op.create_table(
        "ttl_habit",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("context", sa.String(length=8), nullable=False),
        sa.Column("seen", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("within_5m", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("within_1h", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("team_id", "context", name=op.f("pk_ttl_habit")),
    )


def downgrade() -> None:
    op.drop_table("ttl_habit")
    with op.batch_alter_table("thread_state", schema=None) as batch:
        batch.drop_column("anchor_at")
        batch.drop_column("anchor_tokens")
        batch.drop_column("anchor_digest")
        batch.drop_column("anchor_ts")
        batch.drop_column("last_gap_seconds")
