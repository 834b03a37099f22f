"""When content first heard of each avatar, for the owner's avatar list (newest first).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 01:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("content_avatars", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    # Rows projected before this revision: the time of their newest event is the best estimate there is.
    op.execute("UPDATE content_avatars SET created_at = source_time")
    with op.batch_alter_table("content_avatars", schema=None) as batch_op:
        batch_op.alter_column("created_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_index(
        "ix_content_avatars_owner_created", "content_avatars", ["owner_id", "created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_content_avatars_owner_created", table_name="content_avatars")
    with op.batch_alter_table("content_avatars", schema=None) as batch_op:
        batch_op.drop_column("created_at")
