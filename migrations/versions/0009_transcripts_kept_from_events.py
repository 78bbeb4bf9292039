"""Transcripts kept from message events: the receivers' uptime, per-conversation keeping, windows
read whole, the per-workspace read budget, deferred jobs, and the workspace's keeping choice.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 13:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_receiver",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("host", sa.String(length=120), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("seen_at", TZ, nullable=False),
        sa.Column("stopped_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_receiver")),
    )
    op.create_table(
        "conversation_state",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=True),
        sa.Column("member_since", TZ, nullable=True),
        sa.Column("purged_before", TZ, nullable=True),
        sa.Column("backfilled_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("team_id", "channel_id", name=op.f("pk_conversation_state")),
    )
    op.create_table(
        "kept_span",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("thread_ts", sa.String(length=32), nullable=False),
        sa.Column("start_at", TZ, nullable=False),
        sa.Column("end_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kept_span")),
    )
    op.create_index(
        "ix_kept_span_thread", "kept_span", ["team_id", "channel_id", "thread_ts"], unique=False
    )
    op.create_table(
        "read_budget",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=40), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=120), nullable=True),
        sa.Column("next_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("team_id", "method", name=op.f("pk_read_budget")),
    )
    with op.batch_alter_table("thread_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("floor_at", TZ, nullable=True))
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_at", TZ, nullable=True))
    with op.batch_alter_table("workspace_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keep_transcripts", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("backfill_on_join", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspace_settings", schema=None) as batch_op:
        batch_op.drop_column("backfill_on_join")
        batch_op.drop_column("keep_transcripts")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("run_at")
    with op.batch_alter_table("thread_state", schema=None) as batch_op:
        batch_op.drop_column("floor_at")
    op.drop_table("read_budget")
    op.drop_index("ix_kept_span_thread", table_name="kept_span")
    op.drop_table("kept_span")
    op.drop_table("conversation_state")
    op.drop_table("event_receiver")
