"""Identity's first tables (prefixed `identity_`): avatars, LoRA versions, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 10:56:06.427540
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
        "identity_avatars",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("active_lora_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_avatars")),
    )
    op.create_index(
        "ix_identity_avatars_owner_created", "identity_avatars", ["owner_id", "created_at", "id"], unique=False
    )

    op.create_table(
        "identity_outbox",
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_identity_outbox_event_id")),
    )
    op.create_index(
        "ix_identity_outbox_unsent",
        "identity_outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )

    op.create_table(
        "identity_lora_models",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("avatar_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("upload_key", sa.String(length=1024), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=True),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("default_scale", sa.Float(), nullable=False),
        sa.Column("trigger_words", sa.JSON(), nullable=False),
        sa.Column("activate_when_ready", sa.Boolean(), nullable=False),
        sa.Column("declared_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("layer_count", sa.Integer(), nullable=True),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("components", sa.JSON(), nullable=True),
        sa.Column("rejection_reason", sa.String(length=64), nullable=True),
        sa.Column("rejection_message", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["avatar_id"], ["identity_avatars.id"], name=op.f("fk_identity_lora_models_avatar_id_identity_avatars")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_lora_models")),
    )
    op.create_index(
        "ix_identity_lora_models_avatar_created",
        "identity_lora_models",
        ["avatar_id", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_identity_lora_models_avatar_created", table_name="identity_lora_models")

    op.drop_table("identity_lora_models")
    op.drop_index(
        "ix_identity_outbox_unsent",
        table_name="identity_outbox",
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )

    op.drop_table("identity_outbox")
    op.drop_index("ix_identity_avatars_owner_created", table_name="identity_avatars")

    op.drop_table("identity_avatars")
