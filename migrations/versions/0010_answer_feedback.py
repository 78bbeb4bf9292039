"""Feedback on answers: one vote per person per answer (its usage ledger row), changeable, a
👎 with an optional reason; a summary remembers its ledger row so votes on it and on its shared
copy count for the same answer.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "answer_feedback",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("usage_id", BIG_ID, nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["usage_id"],
            ["usage_record.id"],
            name=op.f("fk_answer_feedback_usage_id_usage_record"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answer_feedback")),
        sa.UniqueConstraint("usage_id", "user_id", name=op.f("uq_answer_feedback_usage_id")),
    )
    op.create_index("ix_answer_feedback_team", "answer_feedback", ["team_id"], unique=False)
    with op.batch_alter_table("summary", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_id", BIG_ID, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("summary", schema=None) as batch_op:
        batch_op.drop_column("usage_id")
    op.drop_index("ix_answer_feedback_team", table_name="answer_feedback")
    op.drop_table("answer_feedback")
