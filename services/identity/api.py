"""Identity HTTP routes (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request

from services.common.http_errors import ERROR_RESPONSES
from services.identity.models import Avatar, LoraModel
from services.identity.schemas import AvatarCreate, AvatarOut, LoraCreate, LoraOut, LoraUpload
from services.identity.service import IdentityService

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
health_router = APIRouter()


def get_service(request: Request) -> IdentityService:
    """The service the lifespan built."""
    return cast(IdentityService, request.app.state.identity_service)


Service = Annotated[IdentityService, Depends(get_service)]


def avatar_out(avatar: Avatar) -> AvatarOut:
    """The API view of an avatar."""
    return AvatarOut(
        id=avatar.id,
        owner_id=avatar.owner_id,
        name=avatar.name,
        active_lora_id=avatar.active_lora_id,
        created_at=avatar.created_at,
    )


def lora_out(lora: LoraModel) -> LoraOut:
    """The API view of a LoRA model."""
    return LoraOut.model_validate(
        {
            "lora_id": lora.id,
            "avatar_id": lora.avatar_id,
            "status": lora.status,
            "object_key": lora.object_key,
            "base_model": lora.base_model,
            "default_scale": lora.default_scale,
            "trigger_words": lora.trigger_words,
            "size_bytes": lora.size_bytes,
            "sha256": lora.sha256,
            "created_at": lora.created_at,
            "ready_at": lora.ready_at,
        }
    )


@router.post("/avatars", status_code=201)
async def create_avatar(body: AvatarCreate, service: Service) -> AvatarOut:
    """Create an avatar (emits avatar.created)."""
    return avatar_out(await service.create_avatar(body.owner_id, body.name))


@router.get("/avatars/{avatar_id}")
async def get_avatar(avatar_id: uuid.UUID, service: Service) -> AvatarOut:
    """One avatar."""
    return avatar_out(await service.get_avatar(avatar_id))


@router.post("/avatars/{avatar_id}/loras", status_code=201)
async def register_lora(avatar_id: uuid.UUID, service: Service, body: LoraCreate | None = None) -> LoraUpload:
    """Register a LoRA file and get a presigned PUT URL to upload it to."""
    registration = await service.register_lora(avatar_id, body or LoraCreate())
    return LoraUpload(
        lora_id=registration.lora.id,
        avatar_id=registration.lora.avatar_id,
        object_key=registration.lora.object_key,
        upload_url=registration.upload_url,
        upload_expires_in=registration.upload_expires_in,
    )


@router.post("/loras/{lora_id}/complete")
async def complete_lora(lora_id: uuid.UUID, service: Service) -> LoraOut:
    """Check the uploaded file and make the LoRA ready and active (emits lora.ready, avatar.updated once)."""
    return lora_out(await service.complete_lora(lora_id))


@router.get("/loras/{lora_id}")
async def get_lora(lora_id: uuid.UUID, service: Service) -> LoraOut:
    """One LoRA model."""
    return lora_out(await service.get_lora(lora_id))


@health_router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}
