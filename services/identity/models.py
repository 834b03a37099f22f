"""Identity tables (prefixed `identity_`): avatars, LoRA versions, owners' lock rows, and the outbox (its own
metadata)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.messaging.outbox import make_outbox_table
from services.common.persistence.db import make_metadata
from services.common.persistence.sqltypes import UtcDateTime

# Every identity table carries this prefix, so identity and content can share one database without ever
# mixing their `avatars` or `outbox` tables.
TABLE_PREFIX = "identity_"


class Base(DeclarativeBase):
    """Declarative base of the identity tables."""

    metadata = make_metadata()


class LoraStatus(StrEnum):
    """Where a LoRA version is in its life: pending → ready | rejected | expired; pending or ready → retired."""

    PENDING_UPLOAD = "pending_upload"
    READY = "ready"
    REJECTED = "rejected"
    RETIRED = "retired"
    # Not completed within LORA_REGISTRATION_TTL_SECONDS: never used, its upload object deleted.
    EXPIRED = "expired"


class Owner(Base):
    """One row per owner that added an avatar or a LoRA version: locked by every write a per-owner quota bounds, so
    that counting and adding take turns across requests and replicas (services/identity/quotas.py)."""

    __tablename__ = f"{TABLE_PREFIX}owners"

    owner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Avatar(Base):
    """An identity a creator owns; deleted avatars stay as rows (soft delete) but answer 404 everywhere."""

    __tablename__ = f"{TABLE_PREFIX}avatars"
    # Listing an owner's avatars newest first, page by page (keyset on created_at, id).
    __table_args__ = (Index(f"ix_{TABLE_PREFIX}avatars_owner_created", "owner_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # The token's `sub`: an IdP's subject, not necessarily a UUID.
    owner_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # No foreign key: avatars and LoRAs refer to each other, and the LoRA row is the one that points home.
    active_lora_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class LoraModel(Base):
    """A LoRA version of an avatar: registered, uploaded by the client, verified, then used or retired."""

    __tablename__ = f"{TABLE_PREFIX}lora_models"
    __table_args__ = (
        Index(f"ix_{TABLE_PREFIX}lora_models_avatar_created", "avatar_id", "created_at", "id"),
        # An owner's open registrations and ready versions, counted by each registration (quotas).
        Index(f"ix_{TABLE_PREFIX}lora_models_owner_status", "owner_id", "status"),
        # Registrations whose upload object the retention loop has still to delete.
        Index(
            f"ix_{TABLE_PREFIX}lora_models_upload_due",
            "expires_at",
            postgresql_where=text("upload_deleted_at IS NULL"),
            sqlite_where=text("upload_deleted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    avatar_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey(f"{TABLE_PREFIX}avatars.id"))
    owner_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    # Where the client PUTs the file (a presigned URL points here); never used for generation.
    upload_key: Mapped[str] = mapped_column(String(1024))
    # The verified copy at a content-addressed key no upload URL points at; set when ready.
    object_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    base_model: Mapped[str] = mapped_column(String(200))
    default_scale: Mapped[float] = mapped_column(Float)
    trigger_words: Mapped[list[Any]] = mapped_column(JSON)
    # Make this version the avatar's active one as soon as it is ready.
    activate_when_ready: Mapped[bool] = mapped_column(Boolean)
    declared_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # What verification found (ready versions).
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    layer_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target_modules: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    components: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # Why verification refused the file (rejected versions): a stable code and a sentence.
    rejection_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rejection_message: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ready_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # When a registration stops being open (set at registration; none for an admin import, which has no upload URL).
    # Past it the upload URL is dead, so the upload object can go, whatever became of the version.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # When the retention loop deleted the upload object (or found none): the row is done with.
    upload_deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


outbox_table = make_outbox_table(Base.metadata, f"{TABLE_PREFIX}outbox")
