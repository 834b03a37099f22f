"""Content API bodies (requests and responses); never the table models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.worker import MAX_SEED, Sha256Hex, Timings, WorkerRequest
from services.common.http.api_types import INTEGRAL_FLOAT_AS_INT, MultilineText, NonBlankMultilineText, StrictFloat
from services.common.http.pagination import PageOut
from services.content.models import GenerationStatus

# The worker contract's bounds are the schema's outer bounds (whatever is accepted can run); a deployment narrows
# sizes, steps and their product with settings (GET /api/v1/content/limits says what they are).
_WORKER = WorkerRequest.model_fields
_PROMPT_MAX = 2000


def _bound(name: str, kind: str) -> int | float:
    for item in _WORKER[name].metadata:
        value = getattr(item, kind, None)
        if value is not None:
            return value  # type: ignore[no-any-return]
    raise KeyError(f"the worker contract has no {kind} for {name}")


StrictInt = Annotated[int, Field(strict=True)]
Side = Annotated[
    int,
    Field(strict=True, ge=_bound("width", "ge"), le=_bound("width", "le"), multiple_of=8),
    INTEGRAL_FLOAT_AS_INT,
]
# The length bound comes before the text validators, so that it is checked on the string as sent and its
# message reads "at most 2000 characters".
Prompt = Annotated[str, Field(min_length=1, max_length=_PROMPT_MAX), *NonBlankMultilineText.__metadata__]
NegativePrompt = Annotated[str, Field(max_length=_PROMPT_MAX), *MultilineText.__metadata__]


class GenerateRequest(BaseModel):
    """POST /api/v1/content/generate: an image of an avatar. Numbers are JSON numbers ("0.5" is refused), text is
    NFC-normalised and holds no control character but line breaks, unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    avatar_id: uuid.UUID
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: Side = _WORKER["width"].default
    height: Side = _WORKER["height"].default
    steps: Annotated[
        int, Field(strict=True, ge=1, le=_bound("steps", "le"), description="denoising steps"), INTEGRAL_FLOAT_AS_INT
    ] = _WORKER["steps"].default
    cfg: Annotated[StrictFloat, Field(ge=_bound("cfg", "ge"), le=_bound("cfg", "le"))] = _WORKER["cfg"].default
    seed: (
        Annotated[
            int,
            Field(
                strict=True, ge=0, le=MAX_SEED, description="null or absent: drawn at random, returned in the answer"
            ),
            INTEGRAL_FLOAT_AS_INT,
        ]
        | None
    ) = None
    lora_scale: (
        Annotated[
            StrictFloat,
            Field(
                ge=_bound("lora_scale", "ge"),
                le=_bound("lora_scale", "le"),
                description="null or absent: the LoRA's default scale",
            ),
        ]
        | None
    ) = None


class GenerationParamsOut(BaseModel):
    """The parameters a generation runs with (defaults filled in, the seed drawn)."""

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
    """Why a generation failed: `error_code` is one of the documented codes; `retryable` says whether the same
    request may succeed if submitted again."""

    error_code: str
    message: str
    retryable: bool


class GenerationTimingsOut(BaseModel):
    """Where a generation's time went, in seconds: waiting for the GPU, on the GPU, and in all."""

    queue_wait_seconds: float | None = Field(description="from submit to the worker starting it")
    worker_seconds: float | None = Field(description="the worker's own time for the image")
    total_seconds: float | None = Field(description="from submit to the final status")


class GenerationOut(BaseModel):
    """A generation and, when it is done, its image or its error."""

    id: uuid.UUID
    status: GenerationStatus
    avatar_id: str
    params: GenerationParamsOut
    seed: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    attempts: int
    timings: GenerationTimingsOut
    worker_timings: Timings | None = Field(description="the worker's breakdown in milliseconds, once completed")
    image: ImageOut | None = Field(description="once completed: the image and a fresh download URL")
    error: GenerationErrorOut | None = Field(description="once failed")
    events_url: str | None = Field(
        default=None,
        description="a signed, short-lived URL of this generation's event stream, for clients that cannot send "
        "an Authorization header (EventSource); null in lists",
    )


class GenerationPage(PageOut[GenerationOut]):
    """A page of the caller's generations, newest first."""


class GenerationEventOut(BaseModel):
    """One Server-Sent Event of GET /api/v1/content/{id}/events: a status the generation reached, when, and the
    generation as it stands now."""

    status: GenerationStatus
    at: datetime
    generation: GenerationOut


class NumberRange(BaseModel):
    """Inclusive bounds of a number."""

    min: float
    max: float


class LimitsOut(BaseModel):
    """This deployment's bounds on a submit, and the caller's limits."""

    min_side: int
    max_side: int
    side_multiple_of: Literal[8] = 8
    max_steps: int
    max_pixel_steps: int = Field(description="the cost budget: width × height × steps at most")
    cfg_range: NumberRange
    lora_scale_range: NumberRange
    max_prompt_length: int
    max_in_flight: int = Field(description="generations queued or running at once, per owner")
    submit_rate_per_minute: float
    submit_burst: int
    max_wait_seconds: float = Field(description="the largest N honoured in `Prefer: wait=N`")


class AvatarStatusOut(BaseModel):
    """Whether content knows an avatar yet and can generate for it."""

    id: str
    known: Literal[True] = True
    active_lora_id: str | None
    ready: bool
    deleted: bool


class AvatarOut(BaseModel):
    """One of the caller's avatars as content knows it from identity's events."""

    id: str
    name: str
    active_lora_id: str | None
    ready: bool = Field(description="a generation for it would be accepted now (its active LoRA is ready)")
    created_at: datetime = Field(description="when content first heard of it")


class AvatarPage(PageOut[AvatarOut]):
    """A page of the caller's avatars (deleted ones left out), newest first."""
