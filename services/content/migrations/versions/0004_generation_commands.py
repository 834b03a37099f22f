"""Generations requested by event: the requesting service, its command's id and correlation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: the API's generations (every existing row) were requested by no service.
    with op.batch_alter_table("content_generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_by", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("command_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("command_correlation", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("content_generations", schema=None) as batch_op:
        batch_op.drop_column("command_correlation")
        batch_op.drop_column("command_id")
        batch_op.drop_column("requested_by")
