"""Content's first tables (prefixed `content_`): avatar and LoRA projections, generations, outbox, inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 10:41:21.753781
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "content_avatars",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("active_lora_id", sa.String(length=128), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("source_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_avatars")),
    )
    op.create_table(
        "content_loras",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("avatar_id", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("default_scale", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_loras")),
    )
    op.create_index(op.f("ix_content_loras_avatar_id"), "content_loras", ["avatar_id"], unique=False)
    op.create_table(
        "content_generations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("avatar_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("lora", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image", sa.JSON(), nullable=True),
        sa.Column("generation_time_seconds", sa.Float(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("model_info", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_generations")),
    )
    op.create_index(op.f("ix_content_generations_avatar_id"), "content_generations", ["avatar_id"], unique=False)
    op.create_table(
        "content_outbox",
        # SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a BIGSERIAL.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("routing_key", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("traceparent", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_content_outbox_event_id")),
    )
    # The relay's scan of unsent rows (partial on both databases).
    op.create_index(
        "ix_content_outbox_unsent",
        "content_outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )
    op.create_table(
        "content_inbox",
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_content_inbox")),
    )


def downgrade() -> None:
    op.drop_table("content_inbox")
    op.drop_index("ix_content_outbox_unsent", table_name="content_outbox")
    op.drop_table("content_outbox")
    op.drop_index(op.f("ix_content_generations_avatar_id"), table_name="content_generations")
    op.drop_table("content_generations")
    op.drop_index(op.f("ix_content_loras_avatar_id"), table_name="content_loras")
    op.drop_table("content_loras")
    op.drop_table("content_avatars")
