"""Renewals the keep-alive declined, so what followed them is learnt too.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 13:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "renewal_declined",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
        ),
        sa.Column("team_id", sa.String(32), nullable=False),
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("thread_ts", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("early", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_renewal_declined")),
    )
    op.create_index("ix_renewal_declined_team_at", "renewal_declined", ["team_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_renewal_declined_team_at", table_name="renewal_declined")
    op.drop_table("renewal_declined")
