"""Content API bodies (requests and responses); never the table models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict

from contracts.worker import Sha256Hex, Timings, WorkerRequest
from services.common.api_types import NonBlankText, Text
from services.content.models import GenerationStatus

# The worker contract's fields: its bounds and defaults are the API's, so whatever is accepted can run.
_WORKER = WorkerRequest.model_fields


class GenerateRequest(BaseModel):
    """POST /api/v1/content/generate."""

    model_config = ConfigDict(extra="forbid")

    avatar_id: uuid.UUID
    prompt: Annotated[NonBlankText, *_WORKER["prompt"].metadata]
    negative_prompt: Annotated[Text, *_WORKER["negative_prompt"].metadata] = _WORKER["negative_prompt"].default
    width: Annotated[int, *_WORKER["width"].metadata] = _WORKER["width"].default
    height: Annotated[int, *_WORKER["height"].metadata] = _WORKER["height"].default
    steps: Annotated[int, *_WORKER["steps"].metadata] = _WORKER["steps"].default
    cfg: Annotated[float, *_WORKER["cfg"].metadata] = _WORKER["cfg"].default
    # null: a random seed, returned in the answer.
    seed: Annotated[int, *_WORKER["seed"].metadata] | None = None
    # null: the LoRA's default scale.
    lora_scale: Annotated[float, *_WORKER["lora_scale"].metadata] | None = None


class GenerationAccepted(BaseModel):
    """The answer to a generate request: poll GET /api/v1/content/{id}."""

    id: uuid.UUID
    status: Literal[GenerationStatus.QUEUED] = GenerationStatus.QUEUED
    seed: int


class GenerationParamsOut(BaseModel):
    """The parameters a generation runs with (defaults filled in)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    seed: int
    lora_scale: float | None


class ImageOut(BaseModel):
    """The stored image and a URL that downloads it (made at read time, never stored)."""

    url: str
    width: int
    height: int
    sha256: Sha256Hex
    size_bytes: int
    content_type: str


class GenerationErrorOut(BaseModel):
    """Why a generation failed."""

    error_code: str
    error: str
    retryable: bool


class GenerationOut(BaseModel):
    """A generation and, when it is done, its image or its error."""

    id: uuid.UUID
    status: GenerationStatus
    avatar_id: str
    params: GenerationParamsOut
    seed: int
    created_at: datetime
    updated_at: datetime
    attempts: int
    image: ImageOut | None
    error: GenerationErrorOut | None
    generation_time_seconds: float | None
    timings: Timings | None


class AvatarStatusOut(BaseModel):
    """Whether content knows an avatar yet and can generate for it."""

    id: str
    known: Literal[True] = True
    active_lora_id: str | None
    ready: bool
    deleted: bool
