"""Content tables (`content_*`): the avatar/LoRA projection, generations, outbox and inbox (its own metadata)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import make_metadata
from services.common.inbox import make_inbox_table
from services.common.outbox import make_outbox_table
from services.common.sqltypes import UtcDateTime


class Base(DeclarativeBase):
    """Declarative base of the content tables: all named `content_*` (a database may be shared), built by
    migrations/."""

    metadata = make_metadata()


class GenerationStatus(StrEnum):
    """Where a generation stands; completed and failed are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class LoraState(StrEnum):
    """A projected LoRA: usable, or retired for good."""

    READY = "ready"
    RETIRED = "retired"


class AvatarProjection(Base):
    """What content knows of an avatar, from identity's events (ids as identity sends them)."""

    __tablename__ = "content_avatars"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200))
    active_lora_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The time of the newest identity event applied: an older one arriving late changes nothing.
    source_time: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LoraProjection(Base):
    """What content knows of a LoRA model, from identity's events."""

    __tablename__ = "content_loras"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    avatar_id: Mapped[str] = mapped_column(String(128), index=True)
    owner_id: Mapped[str] = mapped_column(String(128))
    object_key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(200))
    default_scale: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Generation(Base):
    """One requested image and where it stands."""

    __tablename__ = "content_generations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128))
    avatar_id: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))
    # GenerationParams as JSON (seed included) and the LoraRef (object key, sha256, scale), never a URL.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    lora: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deadline: Mapped[datetime] = mapped_column(UtcDateTime)
    # Set by generation.completed (ImageRef as JSON: object key, sha256, size, type) ...
    image: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    generation_time_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    model_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # ... or by generation.failed ({error_code, error, retryable, details}).
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


outbox_table = make_outbox_table(Base.metadata, "content_outbox")
inbox_table = make_inbox_table(Base.metadata, "content_inbox")
