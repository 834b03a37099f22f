"""Identity use cases: the only place that decides what is accepted, what changes and which events go out."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import AvatarCreated, AvatarEvent, AvatarUpdated, LoraReady
from contracts.safetensors_header import HEADER_LENGTH_BYTES, NotSafetensorsError, check_header, header_length
from contracts.topology import SERVICE_IDENTITY, event_source
from services.common.events import new_event
from services.common.http_errors import ConflictError, FieldError, InvalidRequestError, NotFoundError
from services.common.outbox import add_to_outbox
from services.common.storage import ObjectInfo, ObjectNotFoundError
from services.identity import repository
from services.identity.models import Avatar, LoraModel, LoraStatus, outbox_table
from services.identity.schemas import LoraCreate

log = logging.getLogger(__name__)

SOURCE = event_source(SERVICE_IDENTITY)


class LoraObjects(Protocol):
    """What identity needs from object storage (services.common.storage.ObjectStorage fits)."""

    async def presign_put(self, key: str, ttl_seconds: int, content_type: str | None = None) -> str: ...

    async def head(self, key: str, *, compute_sha256: bool = False) -> ObjectInfo: ...

    async def get_range(self, key: str, start: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class LoraLimits:
    """Upload limits (LORA_MAX_BYTES, LORA_UPLOAD_URL_TTL_SECONDS)."""

    max_bytes: int
    upload_url_ttl_seconds: int


@dataclass(frozen=True)
class CheckedUpload:
    """An uploaded LoRA file that passed every check: its size and the sha256 computed from its bytes."""

    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class LoraRegistration:
    """A registered LoRA and its one-time upload URL (returned to the caller, never stored)."""

    lora: LoraModel
    upload_url: str
    upload_expires_in: int


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def lora_object_key(avatar_id: uuid.UUID, lora_id: uuid.UUID) -> str:
    """Where a LoRA file lives in the bucket."""
    return f"loras/{avatar_id}/{lora_id}.safetensors"


def check_declared_size(size_bytes: int | None, max_bytes: int) -> None:
    """Refuse a declared size over the cap before any upload URL is handed out."""
    if size_bytes is not None and size_bytes > max_bytes:
        reason = f"{size_bytes} bytes is over the limit of {max_bytes} bytes"
        raise InvalidRequestError(f"LoRA file too large: {reason}", fields=[FieldError("size_bytes", reason)])


def check_uploaded_size(size_bytes: int, declared: int | None, max_bytes: int) -> None:
    """Refuse an uploaded object over the cap, or one whose size differs from the declared one."""
    if size_bytes > max_bytes:
        reason = f"uploaded object is {size_bytes} bytes, over the limit of {max_bytes} bytes"
        raise InvalidRequestError(f"LoRA file too large: {reason}", fields=[FieldError("object_key", reason)])
    if declared is not None and size_bytes != declared:
        reason = f"uploaded object is {size_bytes} bytes but {declared} were declared"
        raise InvalidRequestError(f"LoRA upload incomplete: {reason}", fields=[FieldError("object_key", reason)])


def avatar_event(payload_type: type[AvatarEvent], avatar: Avatar, correlation_id: str) -> EventEnvelope:
    """An avatar.* event carrying the avatar as it now is."""
    payload = payload_type(
        avatar_id=str(avatar.id),
        owner_id=str(avatar.owner_id),
        name=avatar.name,
        active_lora_model_id=str(avatar.active_lora_id) if avatar.active_lora_id else None,
    )
    return new_event(payload, source=SOURCE, subject=str(avatar.id), correlation_id=correlation_id)


def lora_ready_event(lora: LoraModel, owner_id: uuid.UUID) -> EventEnvelope:
    """The lora.ready event of a validated LoRA."""
    if lora.sha256 is None or lora.size_bytes is None:
        raise ValueError("a LoRA is announced only once its sha256 and size are known")
    payload = LoraReady(
        lora_model_id=str(lora.id),
        avatar_id=str(lora.avatar_id),
        owner_id=str(owner_id),
        object_key=lora.object_key,
        sha256=lora.sha256,
        size_bytes=lora.size_bytes,
        base_model=lora.base_model,
        default_scale=lora.default_scale,
        trigger_words=list(lora.trigger_words),
    )
    return new_event(payload, source=SOURCE, subject=str(lora.id), correlation_id=str(lora.id))


class IdentityService:
    """Avatars and their LoRA files; every change and its events commit together (outbox)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        objects: LoraObjects,
        limits: LoraLimits,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._sessions = sessions
        self._objects = objects
        self._limits = limits
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock

    async def create_avatar(self, owner_id: uuid.UUID, name: str) -> Avatar:
        """Create an avatar and announce it (avatar.created)."""
        now = self._clock()
        avatar = Avatar(
            id=uuid.uuid4(), owner_id=owner_id, name=name, active_lora_id=None, created_at=now, updated_at=now
        )
        async with self._sessions() as session, session.begin():
            session.add(avatar)
            await add_to_outbox(session, outbox_table, avatar_event(AvatarCreated, avatar, str(avatar.id)))
        self._on_commit()
        log.info("avatar %s created", avatar.id)
        return avatar

    async def get_avatar(self, avatar_id: uuid.UUID) -> Avatar:
        """The avatar; NotFoundError when unknown."""
        async with self._sessions() as session:
            avatar = await repository.get_avatar(session, avatar_id)
        if avatar is None:
            raise NotFoundError("unknown avatar")
        return avatar

    async def get_lora(self, lora_id: uuid.UUID) -> LoraModel:
        """The LoRA model; NotFoundError when unknown."""
        async with self._sessions() as session:
            lora = await repository.get_lora(session, lora_id)
        if lora is None:
            raise NotFoundError("unknown LoRA")
        return lora

    async def register_lora(self, avatar_id: uuid.UUID, request: LoraCreate) -> LoraRegistration:
        """Record a pending LoRA for the avatar and sign a PUT URL for its file."""
        check_declared_size(request.size_bytes, self._limits.max_bytes)
        lora_id = uuid.uuid4()
        async with self._sessions() as session, session.begin():
            if await repository.get_avatar(session, avatar_id) is None:
                raise NotFoundError("unknown avatar")
            lora = LoraModel(
                id=lora_id,
                avatar_id=avatar_id,
                status=LoraStatus.PENDING_UPLOAD.value,
                object_key=lora_object_key(avatar_id, lora_id),
                base_model=request.base_model,
                default_scale=request.default_scale,
                trigger_words=list(request.trigger_words),
                declared_size_bytes=request.size_bytes,
                created_at=self._clock(),
            )
            session.add(lora)
        ttl = self._limits.upload_url_ttl_seconds
        # No content type is bound into the signature: any client may PUT the raw bytes.
        upload_url = await self._objects.presign_put(lora.object_key, ttl)
        log.info("LoRA %s registered for avatar %s; awaiting upload", lora.id, avatar_id)
        return LoraRegistration(lora=lora, upload_url=upload_url, upload_expires_in=ttl)

    async def complete_lora(self, lora_id: uuid.UUID) -> LoraModel:
        """Check the uploaded file, mark the LoRA ready, make it the avatar's active LoRA, and announce both.

        Idempotent: a LoRA that is already ready is returned as is, and nothing new is emitted.
        """
        lora = await self.get_lora(lora_id)
        if lora.status == LoraStatus.READY.value:
            return lora
        checked = await self._check_upload(lora)
        now = self._clock()
        async with self._sessions() as session, session.begin():
            won = await repository.mark_lora_ready(
                session, lora.id, sha256=checked.sha256, size_bytes=checked.size_bytes, now=now
            )
            if won:
                await repository.set_active_lora(session, lora.avatar_id, lora.id, now)
            ready = await repository.get_lora(session, lora.id)
            avatar = await repository.get_avatar(session, lora.avatar_id)
            if ready is None or avatar is None:
                raise NotFoundError("unknown LoRA")
            if won:
                await add_to_outbox(session, outbox_table, lora_ready_event(ready, avatar.owner_id))
                await add_to_outbox(session, outbox_table, avatar_event(AvatarUpdated, avatar, str(lora.id)))
        if won:
            self._on_commit()
            log.info("LoRA %s ready (%d bytes); active for avatar %s", lora.id, checked.size_bytes, lora.avatar_id)
        return ready

    async def _check_upload(self, lora: LoraModel) -> CheckedUpload:
        """The uploaded object's size and sha256, once it passed every check; raises what the caller sees."""
        key = lora.object_key
        try:
            info = await self._objects.head(key)
            check_uploaded_size(info.size, lora.declared_size_bytes, self._limits.max_bytes)
            prefix = await self._objects.get_range(key, 0, HEADER_LENGTH_BYTES)
            length = header_length(prefix, info.size)
            check_header(await self._objects.get_range(key, HEADER_LENGTH_BYTES, length), info.size)
            hashed = await self._objects.head(key, compute_sha256=True)
        except ObjectNotFoundError:
            reason = "no object at this key yet: PUT the file to the upload URL first"
            raise ConflictError("object not uploaded", fields=[FieldError("object_key", reason)]) from None
        except NotSafetensorsError as error:
            raise InvalidRequestError(
                f"uploaded object is not a safetensors file: {error}", fields=[FieldError("object_key", str(error))]
            ) from None
        if hashed.size != info.size or not hashed.sha256:
            raise ConflictError("object changed while it was checked; complete again")
        return CheckedUpload(size_bytes=hashed.size, sha256=hashed.sha256)
