"""Cancel and status times on generations; idempotency keys; owner quotas (rate limit, in-flight cap).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 12:33:14.687365
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "content_idempotency_keys",
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("generation_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "key", name=op.f("pk_content_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_content_idempotency_keys_created_at"), "content_idempotency_keys", ["created_at"], unique=False
    )
    op.create_table(
        "content_owner_quotas",
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_content_owner_quotas")),
    )
    with op.batch_alter_table("content_generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        # Existing rows have no late image to delete.
        batch_op.add_column(sa.Column("image_purge_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index(
        "ix_content_generations_owner_created", "content_generations", ["owner_id", "created_at", "id"], unique=False
    )
    op.create_index("ix_content_generations_owner_status", "content_generations", ["owner_id", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_content_generations_owner_status", table_name="content_generations")
    op.drop_index("ix_content_generations_owner_created", table_name="content_generations")
    with op.batch_alter_table("content_generations", schema=None) as batch_op:
        batch_op.drop_column("image_purge_pending")
        batch_op.drop_column("finished_at")
        batch_op.drop_column("started_at")
    op.drop_table("content_owner_quotas")
    op.drop_index(op.f("ix_content_idempotency_keys_created_at"), table_name="content_idempotency_keys")
    op.drop_table("content_idempotency_keys")
