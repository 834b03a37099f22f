"""Identity tables (prefixed `identity_`): avatars, LoRA versions, and the outbox (its own metadata)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import make_metadata
from services.common.outbox import make_outbox_table
from services.common.sqltypes import UtcDateTime

# Every identity table carries this prefix, so identity and content can share one database without ever
# mixing their `avatars` or `outbox` tables.
TABLE_PREFIX = "identity_"


class Base(DeclarativeBase):
    """Declarative base of the identity tables."""

    metadata = make_metadata()


class LoraStatus(StrEnum):
    """Where a LoRA version is in its life: pending → ready | rejected; pending or ready → retired."""

    PENDING_UPLOAD = "pending_upload"
    READY = "ready"
    REJECTED = "rejected"
    RETIRED = "retired"


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
    __table_args__ = (Index(f"ix_{TABLE_PREFIX}lora_models_avatar_created", "avatar_id", "created_at", "id"),)

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


outbox_table = make_outbox_table(Base.metadata, f"{TABLE_PREFIX}outbox")
