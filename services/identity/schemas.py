"""Identity API bodies (requests and responses); never the table models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events import LoraEvent
from contracts.worker import Sha256Hex
from services.common.api_types import NonBlankText

_LORA = LoraEvent.model_fields
DEFAULT_BASE_MODEL = "sdxl-base-1.0"

TriggerWord = Annotated[NonBlankText, Field(max_length=100)]


class AvatarCreate(BaseModel):
    """POST /api/v1/avatars."""

    model_config = ConfigDict(extra="forbid")

    owner_id: uuid.UUID
    name: Annotated[NonBlankText, Field(min_length=1, max_length=100)]


class AvatarOut(BaseModel):
    """An avatar."""

    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    active_lora_id: uuid.UUID | None
    created_at: datetime


class LoraCreate(BaseModel):
    """POST /api/v1/avatars/{avatar_id}/loras: register a LoRA file before uploading it."""

    model_config = ConfigDict(extra="forbid")

    # The same bounds as the lora.ready event, so that whatever is accepted here can be published.
    default_scale: Annotated[float, *_LORA["default_scale"].metadata] = 1.0
    trigger_words: list[TriggerWord] = Field(default_factory=list, max_length=50)
    base_model: Annotated[NonBlankText, *_LORA["base_model"].metadata] = DEFAULT_BASE_MODEL
    size_bytes: int | None = Field(default=None, ge=1, description="declared size; refused over LORA_MAX_BYTES")


class LoraUpload(BaseModel):
    """A registered LoRA and where to PUT its bytes (the URL is returned once and never stored)."""

    lora_id: uuid.UUID
    avatar_id: uuid.UUID
    status: Literal["pending_upload"] = "pending_upload"
    object_key: str
    upload_url: str
    upload_expires_in: int


class LoraOut(BaseModel):
    """A LoRA model."""

    lora_id: uuid.UUID
    avatar_id: uuid.UUID
    status: Literal["pending_upload", "ready"]
    object_key: str
    base_model: str
    default_scale: float
    trigger_words: list[str]
    size_bytes: int | None
    sha256: Sha256Hex | None
    created_at: datetime
    ready_at: datetime | None
