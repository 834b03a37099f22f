"""Per-owner quotas and expiring registrations: owners' lock rows, a registration's expiry, its upload's deletion.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08 09:00:00.000000
"""

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Registrations made before this revision get a day from their creation (the lifecycle rule docs/identity.md
# recommended for uploads/): their URLs, 7 days at most, are long dead by the time most of them are swept.
BACKFILLED_REGISTRATION_LIFE = timedelta(days=1)

_loras = sa.table(
    "identity_lora_models",
    sa.column("id", sa.Uuid()),
    sa.column("upload_key", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("expires_at", sa.DateTime(timezone=True)),
    sa.column("status", sa.String()),
)


def upgrade() -> None:
    op.create_table(
        "identity_owners",
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_identity_owners")),
    )
    with op.batch_alter_table("identity_lora_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("upload_deleted_at", sa.DateTime(timezone=True), nullable=True))
    _backfill_expiry()
    op.create_index(
        "ix_identity_lora_models_owner_status", "identity_lora_models", ["owner_id", "status"], unique=False
    )
    op.create_index(
        "ix_identity_lora_models_upload_due",
        "identity_lora_models",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("upload_deleted_at IS NULL"),
        sqlite_where=sa.text("upload_deleted_at IS NULL"),
    )


def _backfill_expiry() -> None:
    # Only registrations (an upload URL wrote under uploads/); an admin import's source object is left alone.
    # Computed here rather than in SQL: date arithmetic differs between PostgreSQL and SQLite.
    bind = op.get_bind()
    rows = bind.execute(sa.select(_loras.c.id, _loras.c.created_at).where(_loras.c.upload_key.like("uploads/%")))
    for lora_id, created_at in rows.all():
        bind.execute(
            _loras.update().where(_loras.c.id == lora_id).values(expires_at=created_at + BACKFILLED_REGISTRATION_LIFE)
        )


def downgrade() -> None:
    # The previous revision has no `expired` state; `retired` is the one that also means "never used again".
    op.execute(_loras.update().where(_loras.c.status == "expired").values(status="retired"))
    op.drop_index(
        "ix_identity_lora_models_upload_due",
        table_name="identity_lora_models",
        postgresql_where=sa.text("upload_deleted_at IS NULL"),
        sqlite_where=sa.text("upload_deleted_at IS NULL"),
    )
    op.drop_index("ix_identity_lora_models_owner_status", table_name="identity_lora_models")
    with op.batch_alter_table("identity_lora_models", schema=None) as batch_op:
        batch_op.drop_column("upload_deleted_at")
        batch_op.drop_column("expires_at")
    op.drop_table("identity_owners")
