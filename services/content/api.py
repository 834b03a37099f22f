"""Content HTTP routes (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request

from contracts.worker import Timings
from services.common.http_errors import ERROR_RESPONSES
from services.content.models import GenerationStatus
from services.content.schemas import (
    AvatarStatusOut,
    GenerateRequest,
    GenerationAccepted,
    GenerationErrorOut,
    GenerationOut,
    GenerationParamsOut,
    ImageOut,
)
from services.content.service import ContentService, GenerationView

router = APIRouter(prefix="/api/v1/content", responses=ERROR_RESPONSES)
health_router = APIRouter()


def get_service(request: Request) -> ContentService:
    """The service the lifespan built."""
    return cast(ContentService, request.app.state.content_service)


Service = Annotated[ContentService, Depends(get_service)]


def generation_out(view: GenerationView) -> GenerationOut:
    """The API view of a generation."""
    generation = view.generation
    lora: dict[str, Any] = generation.lora or {}
    return GenerationOut(
        id=generation.id,
        status=GenerationStatus(generation.status),
        avatar_id=generation.avatar_id,
        params=GenerationParamsOut(**generation.params, lora_scale=lora.get("scale")),
        seed=generation.seed,
        created_at=generation.created_at,
        updated_at=generation.updated_at,
        attempts=generation.attempts,
        image=_image_out(generation.image, view.image_url),
        error=_error_out(generation.error),
        generation_time_seconds=generation.generation_time_seconds,
        timings=Timings.model_validate(generation.timings) if generation.timings else None,
    )


def _image_out(image: dict[str, Any] | None, url: str | None) -> ImageOut | None:
    if image is None or url is None:
        return None
    return ImageOut(
        url=url,
        width=image["width"],
        height=image["height"],
        sha256=image["sha256"],
        size_bytes=image["size_bytes"],
        content_type=image["content_type"],
    )


def _error_out(error: dict[str, Any] | None) -> GenerationErrorOut | None:
    if error is None:
        return None
    return GenerationErrorOut(error_code=error["error_code"], error=error["error"], retryable=error["retryable"])


@router.post("/generate", status_code=202)
async def generate(body: GenerateRequest, service: Service) -> GenerationAccepted:
    """Queue a generation for an avatar with a ready LoRA (emits generation.requested)."""
    generation = await service.request_generation(body)
    return GenerationAccepted(id=generation.id, seed=generation.seed)


@router.get("/avatars/{avatar_id}")
async def avatar_status(avatar_id: uuid.UUID, service: Service) -> AvatarStatusOut:
    """Whether content has seen the avatar (identity's events) and can generate for it."""
    status = await service.avatar_status(avatar_id)
    return AvatarStatusOut(
        id=status.avatar.id,
        active_lora_id=status.avatar.active_lora_id,
        ready=status.ready,
        deleted=status.avatar.deleted,
    )


@router.get("/{generation_id}")
async def get_generation(generation_id: uuid.UUID, service: Service) -> GenerationOut:
    """A generation's status, and its image URL once completed."""
    return generation_out(await service.get_generation(generation_id))


@health_router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}
