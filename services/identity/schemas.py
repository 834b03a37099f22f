"""Identity API bodies (requests and responses); never the table models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events import LoraEvent, ObjectKey
from contracts.lora_targets import KNOWN_BASE_MODELS
from contracts.worker import Sha256Hex
from services.common.http.api_types import (
    INTEGRAL_FLOAT_AS_INT,
    MultilineText,
    NonBlankSingleLineText,
    StrictBool,
    StrictFloat,
)

_LORA = LoraEvent.model_fields
DEFAULT_BASE_MODEL = "sdxl-base-1.0"
# The largest file one presigned PUT can carry: R2 takes at most 5 GiB less 5 MiB in a single-part upload
# (developers.cloudflare.com/r2/reference/limits). A deployment narrows it with LORA_MAX_BYTES.
MAX_SINGLE_PUT_BYTES = 5 * 1024**3 - 5 * 1024**2

AvatarName = Annotated[NonBlankSingleLineText, Field(min_length=1, max_length=100)]
AvatarDescription = Annotated[MultilineText, Field(max_length=1000)]
TriggerWord = Annotated[NonBlankSingleLineText, Field(min_length=1, max_length=100)]
TriggerWords = Annotated[list[TriggerWord], Field(max_length=50)]
# The same bounds as the lora.ready event, so that whatever is accepted here can be published.
DefaultScale = Annotated[StrictFloat, *_LORA["default_scale"].metadata]
# The schema names the base models the code has layer tables for, so that a client (or a fuzzer) knows which names
# can be accepted at all; a deployment takes those LORA_BASE_MODELS lists, and refuses another with a 422.
BaseModelName = Annotated[
    NonBlankSingleLineText,
    *_LORA["base_model"].metadata,
    Field(
        description="a base model with a layer table here; this deployment takes those its LORA_BASE_MODELS lists "
        "(another: 422 naming base_model)",
        json_schema_extra={"enum": list(KNOWN_BASE_MODELS)},
    ),
]


class _Request(BaseModel):
    # Unknown fields are refused: a typo ("nmae") must not silently do nothing.
    model_config = ConfigDict(extra="forbid")


class AvatarCreate(_Request):
    """POST /api/v1/avatars. The owner is the token's subject, never a field."""

    name: AvatarName
    description: AvatarDescription | None = None


def _not_null(schema: dict[str, Any]) -> None:
    """Document an optional field as its non-null branch only (an explicit null is refused by the use case)."""
    branches = [branch for branch in schema.get("anyOf", []) if branch.get("type") != "null"]
    if len(branches) == 1:
        del schema["anyOf"]
        schema.update(branches[0])


class AvatarUpdate(_Request):
    """PATCH /api/v1/avatars/{id}: only the fields sent change; `active_lora_id: null` leaves none active."""

    # Optional but never null (a name cannot be removed): the documented schema leaves null out, and the use case
    # refuses an explicit null with a 422 naming `name`.
    name: AvatarName | None = Field(default=None, json_schema_extra=_not_null)
    description: AvatarDescription | None = None
    active_lora_id: uuid.UUID | None = Field(default=None, description="a ready LoRA version of this avatar")


class AvatarOut(BaseModel):
    """An avatar."""

    id: uuid.UUID
    owner_id: str
    name: str
    description: str | None
    active_lora_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class LoraCreate(_Request):
    """POST /api/v1/avatars/{avatar_id}/loras: register a LoRA version before uploading its file."""

    size_bytes: Annotated[
        int,
        Field(
            strict=True,
            ge=1,
            le=MAX_SINGLE_PUT_BYTES,
            description="exact size of the file; the upload URL is signed for it. At most this deployment's "
            "LORA_MAX_BYTES (over it: 422 naming size_bytes) and what is left of the owner's quota (409)",
        ),
        INTEGRAL_FLOAT_AS_INT,
    ]
    default_scale: DefaultScale = 1.0
    trigger_words: TriggerWords = Field(default_factory=list)
    base_model: BaseModelName = DEFAULT_BASE_MODEL
    activate: StrictBool = Field(default=True, description="make it the avatar's active version once it is ready")


class LoraImport(_Request):
    """POST /api/v1/admin/loras/import: verify an object already in the bucket and make it a LoRA version."""

    avatar_id: uuid.UUID
    object_key: Annotated[NonBlankSingleLineText, Field(max_length=1024, description="the object to import")]
    default_scale: DefaultScale = 1.0
    trigger_words: TriggerWords = Field(default_factory=list)
    base_model: BaseModelName = DEFAULT_BASE_MODEL
    activate: StrictBool = True


class LoraUpload(BaseModel):
    """A registered LoRA version and where to PUT its bytes (the URL is returned once and never stored)."""

    lora_id: uuid.UUID
    avatar_id: uuid.UUID
    status: Literal["pending_upload"] = "pending_upload"
    upload_url: str = Field(description="PUT the file here, exactly size_bytes bytes, before it expires")
    upload_method: Literal["PUT"] = "PUT"
    upload_expires_in: int = Field(description="seconds")
    size_bytes: int


class LoraRejectionOut(BaseModel):
    """Why verification refused the file."""

    reason: str = Field(description="a stable code, e.g. too_large, not_safetensors, wrong_architecture")
    message: str


class LoraOut(BaseModel):
    """A LoRA version."""

    lora_id: uuid.UUID
    avatar_id: uuid.UUID
    status: Literal["pending_upload", "ready", "rejected", "retired", "expired"]
    active: bool = Field(description="whether it is its avatar's active version")
    object_key: ObjectKey | None = Field(
        description="the verified, immutable copy (content-addressed); null until ready"
    )
    sha256: Sha256Hex | None
    size_bytes: int | None
    base_model: str
    default_scale: float
    trigger_words: list[str]
    rank: int | None
    alpha: float | None
    layer_count: int | None
    target_modules: list[str] | None
    components: list[str] | None
    rejection: LoraRejectionOut | None
    created_at: datetime
    ready_at: datetime | None
    retired_at: datetime | None
    expires_at: datetime | None = Field(
        description="when the registration stops being open: a version still pending then becomes expired "
        "(null for an admin import)"
    )
