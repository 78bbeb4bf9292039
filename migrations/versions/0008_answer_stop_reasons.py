"""Why an answer stopped: the model's stop_reason and the requester's stop button in the ledger;
a summary's note (cut at the length limit, declined…) kept for the share button.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stop_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("stopped_by_user", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("summary", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("summary", schema=None) as batch_op:
        batch_op.drop_column("note")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.drop_column("stopped_by_user")
        batch_op.drop_column("stop_reason")
