"""Content tables (`content_*`): the avatar/LoRA projection, generations, outbox and inbox (its own metadata)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.messaging.outbox import make_outbox_table
from services.common.persistence.db import make_metadata
from services.common.persistence.sqltypes import UtcDateTime
from services.content.inbox import make_inbox_table


class Base(DeclarativeBase):
    """Declarative base of the content tables: all named `content_*` (a database may be shared), built by
    migrations/."""

    metadata = make_metadata()


class GenerationStatus(StrEnum):
    """Where a generation stands; completed, failed and canceled are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class LoraState(StrEnum):
    """A projected LoRA: usable, or retired for good."""

    READY = "ready"
    RETIRED = "retired"


class AvatarProjection(Base):
    """What content knows of an avatar, from identity's events (ids as identity sends them)."""

    __tablename__ = "content_avatars"
    # The owner's avatars, newest first (GET /api/v1/content/avatars).
    __table_args__ = (Index("ix_content_avatars_owner_created", "owner_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200))
    active_lora_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The time of the first identity event applied (the avatar's creation, when events come in order).
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
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
    # The owner's list, newest first (keyset on created_at, id), and the count of what is in flight.
    __table_args__ = (
        Index("ix_content_generations_owner_created", "owner_id", "created_at", "id"),
        Index("ix_content_generations_owner_status", "owner_id", "status"),
    )

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
    # When the first generation.started came, and when the generation reached its final status.
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Set by generation.completed (ImageRef as JSON: object key, sha256, size, type) ...
    image: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    generation_time_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    model_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # ... or by generation.failed ({error_code, error, retryable, details}).
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # An image that came after a cancel and is still to be deleted from storage (the sweeper retries).
    image_purge_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when a requesting service's generation.submit made it (null for the API's): the service, the command's
    # event id and its correlation, which its generation.finished carries back.
    requested_by: Mapped[str | None] = mapped_column(String(63), nullable=True)
    command_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    command_correlation: Mapped[str | None] = mapped_column(String(128), nullable=True)


class IdempotencyKey(Base):
    """A submit made with an Idempotency-Key: a retry with the same key and body gets the same generation."""

    __tablename__ = "content_idempotency_keys"

    owner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # sha256 of the request as validated (defaults filled in): the same key with another body is refused.
    request_sha256: Mapped[str] = mapped_column(String(64))
    generation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class OwnerQuota(Base):
    """One row per owner: locked by each submit, so that the rate limit and the in-flight cap hold across
    replicas; it holds the owner's token bucket."""

    __tablename__ = "content_owner_quotas"

    owner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    refilled_at: Mapped[datetime] = mapped_column(UtcDateTime)


outbox_table = make_outbox_table(Base.metadata, "content_outbox")
inbox_table = make_inbox_table(Base.metadata, "content_inbox")
