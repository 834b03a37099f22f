"""Identity tables: avatars, LoRA models, and the outbox (its own metadata)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import make_metadata
from services.common.outbox import make_outbox_table
from services.common.sqltypes import UtcDateTime


class Base(DeclarativeBase):
    """Declarative base of the identity tables."""

    metadata = make_metadata()


class LoraStatus(StrEnum):
    """Where a LoRA file is in its life."""

    PENDING_UPLOAD = "pending_upload"
    READY = "ready"


class Avatar(Base):
    """An identity a creator owns."""

    __tablename__ = "avatars"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    name: Mapped[str] = mapped_column(String(100))
    # No foreign key: avatars and LoRAs refer to each other, and the LoRA row is the one that points home.
    active_lora_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LoraModel(Base):
    """A LoRA file of an avatar: registered, uploaded by the client, then validated."""

    __tablename__ = "lora_models"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    avatar_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("avatars.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    object_key: Mapped[str] = mapped_column(String(1024), unique=True)
    base_model: Mapped[str] = mapped_column(String(200))
    default_scale: Mapped[float] = mapped_column(Float)
    trigger_words: Mapped[list[Any]] = mapped_column(JSON)
    declared_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Known once the upload is complete and checked.
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ready_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


outbox_table = make_outbox_table(Base.metadata)
