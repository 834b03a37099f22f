"""Identity HTTP routes (thin: parse, call the service, shape the answer); every route needs a bearer token."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request, Response

from services.common.auth import AdminPrincipal, CurrentPrincipal
from services.common.http.errors import error_responses
from services.common.http.pagination import DEFAULT_PAGE_SIZE, PageCursor, PageLimit, PageOut
from services.identity.avatars import AvatarService
from services.identity.loras import LoraService, LoraView
from services.identity.models import Avatar
from services.identity.schemas import (
    AvatarCreate,
    AvatarOut,
    AvatarUpdate,
    LoraCreate,
    LoraImport,
    LoraOut,
    LoraRejectionOut,
    LoraUpload,
)

# Every route needs a token (401) and validates its input (422); each adds what else it can answer.
router = APIRouter(prefix="/api/v1", tags=["identity"], responses=error_responses(401, 422))
admin_router = APIRouter(prefix="/api/v1/admin", tags=["identity admin"], responses=error_responses(401, 403, 422))
NOT_FOUND = error_responses(404)
NOT_READY = error_responses(404, 409)


def get_avatars(request: Request) -> AvatarService:
    """The avatar use cases the lifespan built."""
    return cast(AvatarService, request.app.state.avatar_service)


def get_loras(request: Request) -> LoraService:
    """The LoRA use cases the lifespan built."""
    return cast(LoraService, request.app.state.lora_service)


Avatars = Annotated[AvatarService, Depends(get_avatars)]
Loras = Annotated[LoraService, Depends(get_loras)]


def avatar_out(avatar: Avatar) -> AvatarOut:
    """The API view of an avatar."""
    return AvatarOut(
        id=avatar.id,
        owner_id=avatar.owner_id,
        name=avatar.name,
        description=avatar.description,
        active_lora_id=avatar.active_lora_id,
        created_at=avatar.created_at,
        updated_at=avatar.updated_at,
    )


def lora_out(view: LoraView) -> LoraOut:
    """The API view of a LoRA version."""
    lora = view.lora
    rejection = (
        LoraRejectionOut(reason=lora.rejection_reason, message=lora.rejection_message or "")
        if lora.rejection_reason
        else None
    )
    return LoraOut.model_validate(
        {
            "lora_id": lora.id,
            "avatar_id": lora.avatar_id,
            "status": lora.status,
            "active": view.active,
            "object_key": lora.object_key,
            "sha256": lora.sha256,
            "size_bytes": lora.size_bytes,
            "base_model": lora.base_model,
            "default_scale": lora.default_scale,
            "trigger_words": lora.trigger_words,
            "rank": lora.rank,
            "alpha": lora.alpha,
            "layer_count": lora.layer_count,
            "target_modules": lora.target_modules,
            "components": lora.components,
            "rejection": rejection,
            "created_at": lora.created_at,
            "ready_at": lora.ready_at,
            "retired_at": lora.retired_at,
            "expires_at": lora.expires_at,
        }
    )


@router.post(
    "/avatars",
    operation_id="identity.avatars.create",
    status_code=201,
    responses=error_responses(409, described={409: "TOO_MANY_AVATARS: the owner has as many avatars as it may"}),
)
async def create_avatar(body: AvatarCreate, caller: CurrentPrincipal, avatars: Avatars) -> AvatarOut:
    """Create an avatar owned by the caller (emits avatar.created); 409 `TOO_MANY_AVATARS` past the owner's quota."""
    return avatar_out(await avatars.create(caller.subject, body))


@router.get("/avatars", operation_id="identity.avatars.list")
async def list_avatars(
    caller: CurrentPrincipal, avatars: Avatars, limit: PageLimit = DEFAULT_PAGE_SIZE, cursor: PageCursor = None
) -> PageOut[AvatarOut]:
    """The caller's avatars, newest first, a page at a time."""
    page = await avatars.list(caller.subject, limit, cursor)
    return PageOut[AvatarOut](items=[avatar_out(a) for a in page.items], next_cursor=page.next_cursor)


@router.get("/avatars/{avatar_id}", responses=NOT_FOUND, operation_id="identity.avatars.get")
async def get_avatar(avatar_id: uuid.UUID, caller: CurrentPrincipal, avatars: Avatars) -> AvatarOut:
    """One of the caller's avatars."""
    return avatar_out(await avatars.get(caller.subject, avatar_id))


@router.patch(
    "/avatars/{avatar_id}",
    operation_id="identity.avatars.update",
    responses=error_responses(
        404,
        409,
        described={
            404: "the avatar is unknown or not the caller's, or active_lora_id names no version of it "
            "(details.fields names active_lora_id)",
            409: "the LoRA version to activate is not ready",
        },
    ),
)
async def update_avatar(
    avatar_id: uuid.UUID, body: AvatarUpdate, caller: CurrentPrincipal, avatars: Avatars
) -> AvatarOut:
    """Change the name, description or active LoRA version (emits avatar.updated when something changed)."""
    return avatar_out(await avatars.update(caller.subject, avatar_id, body))


@router.delete("/avatars/{avatar_id}", status_code=204, responses=NOT_FOUND, operation_id="identity.avatars.delete")
async def delete_avatar(avatar_id: uuid.UUID, caller: CurrentPrincipal, avatars: Avatars) -> Response:
    """Delete the avatar and retire its LoRA versions (emits avatar.deleted and lora.retired)."""
    await avatars.delete(caller.subject, avatar_id)
    return Response(status_code=204)


@router.post(
    "/avatars/{avatar_id}/loras",
    operation_id="identity.loras.register",
    status_code=201,
    responses=error_responses(
        404,
        409,
        422,
        429,
        described={
            409: "LORA_BYTES_QUOTA_EXCEEDED: size_bytes does not fit in the owner's LoRA storage quota",
            422: "INVALID_REQUEST: a field is refused (details.fields names it and why), among them a size_bytes over "
            "this deployment's LORA_MAX_BYTES or a base_model its LORA_BASE_MODELS does not list",
            429: "TOO_MANY_OPEN_UPLOADS: the owner has as many open registrations as it may; Retry-After says when "
            "the first of them expires",
        },
    ),
)
async def register_lora(avatar_id: uuid.UUID, body: LoraCreate, caller: CurrentPrincipal, loras: Loras) -> LoraUpload:
    """Register a LoRA version and get a presigned PUT URL for exactly `size_bytes` bytes, within the owner's quotas
    (open registrations: 429 `TOO_MANY_OPEN_UPLOADS`; bytes: 409 `LORA_BYTES_QUOTA_EXCEEDED`)."""
    registration = await loras.register(caller.subject, avatar_id, body)
    return LoraUpload(
        lora_id=registration.lora.id,
        avatar_id=registration.lora.avatar_id,
        upload_url=registration.upload_url,
        upload_expires_in=registration.upload_expires_in,
        size_bytes=body.size_bytes,
    )


@router.get("/avatars/{avatar_id}/loras", responses=NOT_FOUND, operation_id="identity.loras.list")
async def list_loras(
    avatar_id: uuid.UUID,
    caller: CurrentPrincipal,
    loras: Loras,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> PageOut[LoraOut]:
    """The avatar's LoRA versions, newest first, a page at a time."""
    page = await loras.list(caller.subject, avatar_id, limit, cursor)
    return PageOut[LoraOut](items=[lora_out(v) for v in page.items], next_cursor=page.next_cursor)


@router.post(
    "/loras/{lora_id}/complete",
    operation_id="identity.loras.complete",
    responses=error_responses(
        404,
        409,
        422,
        described={
            409: "nothing was uploaded yet, the version was retired, or REGISTRATION_EXPIRED: it was not completed "
            "in time",
            422: "LORA_REJECTED: the file is refused; details.reason_code says why (docs/identity.md)",
        },
    ),
)
async def complete_lora(lora_id: uuid.UUID, caller: CurrentPrincipal, loras: Loras) -> LoraOut:
    """Verify the uploaded file; ready (emits lora.ready, and avatar.updated when it becomes active), or 422
    `LORA_REJECTED` with `details.reason_code`."""
    return lora_out(await loras.complete(caller.subject, lora_id))


@router.get("/loras/{lora_id}", responses=NOT_FOUND, operation_id="identity.loras.get")
async def get_lora(lora_id: uuid.UUID, caller: CurrentPrincipal, loras: Loras) -> LoraOut:
    """One LoRA version of the caller's."""
    return lora_out(await loras.get(caller.subject, lora_id))


@router.post("/loras/{lora_id}/activate", responses=NOT_READY, operation_id="identity.loras.activate")
async def activate_lora(lora_id: uuid.UUID, caller: CurrentPrincipal, loras: Loras) -> AvatarOut:
    """Make a ready version its avatar's active one (emits avatar.updated); answers the avatar."""
    return avatar_out(await loras.activate(caller.subject, lora_id))


@router.post("/loras/{lora_id}/retire", responses=NOT_READY, operation_id="identity.loras.retire")
async def retire_lora(lora_id: uuid.UUID, caller: CurrentPrincipal, loras: Loras) -> LoraOut:
    """Retire a version for good (emits lora.retired; an avatar whose active version it was has none)."""
    return lora_out(await loras.retire(caller.subject, lora_id))


@admin_router.post(
    "/loras/import",
    operation_id="identity.admin.loras.import",
    status_code=201,
    responses=error_responses(
        404,
        422,
        described={
            404: "no live avatar has avatar_id, or no object lies at object_key (details.fields names which)",
            422: "INVALID_REQUEST: a field is refused (details.fields), among them a base_model this deployment's "
            "LORA_BASE_MODELS does not list; or LORA_REJECTED: the object is not a LoRA it takes "
            "(details.reason_code)",
        },
    ),
)
async def import_lora(body: LoraImport, _admin: AdminPrincipal, loras: Loras) -> LoraOut:
    """Admin: verify an object already in the bucket and add it as a ready version of an avatar."""
    return lora_out(await loras.import_object(body))
