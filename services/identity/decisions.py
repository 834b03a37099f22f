"""Identity's rules (pure functions over rows): which version may be active, and how activation and retirement
change the rows and what they announce."""

from __future__ import annotations

import uuid
from datetime import datetime

from contracts.envelope import EventEnvelope
from contracts.events import AvatarUpdated, LoraRetired
from services.common.http.errors import ConflictError, FieldError, InvalidRequestError, NotFoundError
from services.identity.events import avatar_event, lora_event
from services.identity.models import Avatar, LoraModel, LoraStatus


def check_activatable(lora: LoraModel | None, avatar_id: uuid.UUID, field: str = "active_lora_id") -> LoraModel:
    """The version may become the avatar's active one: it is the avatar's own (else 404 naming the field, as an
    id the caller cannot see is answered everywhere), and ready (else 409)."""
    if lora is None or lora.avatar_id != avatar_id:
        reason = "no LoRA version of this avatar has this id"
        raise NotFoundError(reason, fields=[FieldError(field, reason)])
    if lora.status != LoraStatus.READY.value:
        reason = f"the LoRA version is {lora.status}; only a ready version can be active"
        raise ConflictError(reason, fields=[FieldError(field, reason)])
    return lora


def retire_version(lora: LoraModel, now: datetime) -> EventEnvelope | None:
    """Retire a pending or ready version; a ready one was announced, so its retirement is too (lora.retired)."""
    was_ready = lora.status == LoraStatus.READY.value
    lora.status, lora.retired_at, lora.updated_at = LoraStatus.RETIRED.value, now, now
    return lora_event(LoraRetired, lora) if was_ready else None


def point_avatar_at(avatar: Avatar, lora_id: uuid.UUID | None, now: datetime, correlation_id: str) -> EventEnvelope:
    """Make `lora_id` (or none) the avatar's active version; the avatar.updated that announces it."""
    avatar.active_lora_id, avatar.updated_at = lora_id, now
    return avatar_event(AvatarUpdated, avatar, correlation_id)


def check_declared_size(size_bytes: int, max_bytes: int) -> None:
    """Refuse a declared size over the cap before any upload URL is handed out."""
    if size_bytes > max_bytes:
        reason = f"{size_bytes} bytes is over the limit of {max_bytes} bytes"
        raise InvalidRequestError(f"LoRA file too large: {reason}", fields=[FieldError("size_bytes", reason)])
