"""Files in threads: find a workspace's prepared copies of one file by its id (Slack's
file_deleted and file_change events name only the file).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 16:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_thread_file_file", "thread_file", ["team_id", "file_id"])


def downgrade() -> None:
    op.drop_index("ix_thread_file_file", table_name="thread_file")
