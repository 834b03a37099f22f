"""Identity use cases for LoRA versions: register, complete (verify), import, list, activate, retire."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import LoraReady
from contracts.lora_keys import LoraRejectedError
from contracts.lora_targets import TargetTable, load_target_table
from services.common.http.errors import ConflictError, FieldError, InvalidRequestError, NotFoundError
from services.common.http.pagination import Cursor, Page, page_of
from services.common.messaging.outbox import add_to_outbox
from services.common.storage.objects import ObjectNotFoundError
from services.identity import decisions, repository
from services.identity.clock import Clock, utc_now
from services.identity.errors import avatar_not_found, lora_not_found, lora_rejected
from services.identity.events import lora_event
from services.identity.lora_files import LoraFiles, StoredLora, upload_key
from services.identity.models import Avatar, LoraModel, LoraStatus, outbox_table
from services.identity.quotas import (
    OwnerQuotas,
    check_registration,
    check_still_open,
    registration_expired,
    registration_expiry,
)
from services.identity.schemas import LoraCreate, LoraImport
from services.identity.settings import IdentitySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraLimits:
    """LORA_MAX_BYTES, LORA_UPLOAD_URL_TTL_SECONDS, LORA_BASE_MODELS, LORA_REGISTRATION_TTL_SECONDS and the owner's
    quotas."""

    max_bytes: int
    upload_url_ttl_seconds: int
    base_models: tuple[str, ...]
    # At least upload_url_ttl_seconds (IdentitySettings checks it).
    registration_ttl_seconds: int
    quotas: OwnerQuotas

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> LoraLimits:
        """The limits the service's settings give."""
        return cls(
            max_bytes=settings.lora_max_bytes,
            upload_url_ttl_seconds=settings.lora_upload_url_ttl_seconds,
            base_models=settings.lora_base_models,
            registration_ttl_seconds=settings.lora_registration_ttl_seconds,
            quotas=settings.owner_quotas(),
        )


@dataclass(frozen=True)
class LoraView:
    """A LoRA version and whether it is its avatar's active one."""

    lora: LoraModel
    active: bool


@dataclass(frozen=True)
class LoraRegistration:
    """A registered version and its one-time upload URL (returned to the caller, never stored)."""

    lora: LoraModel
    upload_url: str
    upload_expires_in: int


def ready_values(stored: StoredLora, now: datetime) -> dict[str, object]:
    """The columns a verified file sets on its version."""
    verified, summary = stored.verified, stored.verified.summary
    return {
        "object_key": stored.object_key,
        "sha256": verified.sha256,
        "size_bytes": verified.size_bytes,
        "rank": summary.rank,
        "alpha": summary.alpha,
        "layer_count": summary.layer_count,
        "target_modules": list(summary.target_modules),
        "components": list(summary.components),
        "ready_at": now,
        "updated_at": now,
    }


class LoraService:
    """An avatar's LoRA versions; every change and its events commit together (outbox)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        files: LoraFiles,
        limits: LoraLimits,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
    ) -> None:
        self._sessions = sessions
        self._files = files
        self._limits = limits
        self._on_commit = on_commit
        self._clock = clock

    def target_table(self, base_model: str, field: str = "base_model") -> TargetTable:
        """The module table files for `base_model` are checked against; 422 for a base model not accepted here."""
        if base_model not in self._limits.base_models:
            reason = f"unknown base model; accepted: {', '.join(self._limits.base_models)}"
            raise InvalidRequestError(reason, fields=[FieldError(field, reason)])
        return load_target_table(base_model)

    async def register(self, owner_id: str, avatar_id: uuid.UUID, request: LoraCreate) -> LoraRegistration:
        """Record a pending version of the caller's avatar and sign a PUT URL for exactly its declared size.

        Within the owner's quotas (429 TOO_MANY_OPEN_UPLOADS, 409 LORA_BYTES_QUOTA_EXCEEDED), counted after the
        owner's lock row was taken, so concurrent registrations cannot all see room for one more. The registration
        is open until `registration_ttl_seconds` from now; then the retention loop expires it.
        """
        decisions.check_declared_size(request.size_bytes, self._limits.max_bytes)
        self.target_table(request.base_model)
        lora_id, now = uuid.uuid4(), self._clock()
        async with self._sessions() as session, session.begin():
            if await repository.get_owned_avatar(session, owner_id, avatar_id) is None:
                raise avatar_not_found()
            await repository.lock_owner(session, owner_id, now)
            usage = await repository.upload_usage(session, owner_id, now)
            check_registration(usage, request.size_bytes, self._limits.quotas, now)
            lora = LoraModel(
                id=lora_id,
                avatar_id=avatar_id,
                owner_id=owner_id,
                status=LoraStatus.PENDING_UPLOAD.value,
                upload_key=upload_key(avatar_id, lora_id),
                base_model=request.base_model,
                default_scale=request.default_scale,
                trigger_words=list(request.trigger_words),
                activate_when_ready=request.activate,
                declared_size_bytes=request.size_bytes,
                created_at=now,
                updated_at=now,
                expires_at=registration_expiry(now, self._limits.registration_ttl_seconds),
            )
            session.add(lora)
        ttl = self._limits.upload_url_ttl_seconds
        upload_url = await self._files.presign_upload(lora.upload_key, ttl, request.size_bytes)
        log.info("LoRA %s registered for avatar %s; awaiting upload", lora.id, avatar_id)
        return LoraRegistration(lora=lora, upload_url=upload_url, upload_expires_in=ttl)

    async def get(self, owner_id: str, lora_id: uuid.UUID) -> LoraView:
        """The caller's version; NotFoundError otherwise."""
        async with self._sessions() as session:
            lora = await repository.get_owned_lora(session, owner_id, lora_id)
            if lora is None:
                raise lora_not_found()
            return await self._view(session, lora)

    async def list(self, owner_id: str, avatar_id: uuid.UUID, limit: int, cursor: str | None) -> Page[LoraView]:
        """One page of the avatar's versions, newest first."""
        after = Cursor.decode(cursor) if cursor else None
        async with self._sessions() as session:
            avatar = await repository.get_owned_avatar(session, owner_id, avatar_id)
            if avatar is None:
                raise avatar_not_found()
            rows = await repository.list_avatar_loras(session, avatar_id, after, limit)
        page = page_of(rows, limit)
        return Page([LoraView(lora, lora.id == avatar.active_lora_id) for lora in page.items], page.next_cursor)

    async def complete(self, owner_id: str, lora_id: uuid.UUID) -> LoraView:
        """Verify the uploaded file and make the version ready (and active when asked); announce it.

        Idempotent: a ready version is returned as is, a rejected one is refused again with its reason, an expired
        one (or one past its expiry) is a 409 REGISTRATION_EXPIRED.
        """
        async with self._sessions() as session:
            lora = await repository.get_owned_lora(session, owner_id, lora_id)
            if lora is None:
                raise lora_not_found()
            if lora.status == LoraStatus.READY.value:
                return await self._view(session, lora)
        if lora.status == LoraStatus.REJECTED.value:
            raise lora_rejected(lora.rejection_reason or "rejected", lora.rejection_message or "the file was rejected")
        if lora.status == LoraStatus.EXPIRED.value:
            raise registration_expired()
        if lora.status != LoraStatus.PENDING_UPLOAD.value:
            raise ConflictError(f"the LoRA version is {lora.status}")
        # The retention loop may not have swept it yet: past its expiry it is expired all the same.
        check_still_open(lora.expires_at, self._clock())
        table = load_target_table(lora.base_model)
        try:
            stored = await self._files.verify_and_store(lora.upload_key, table, declared_size=lora.declared_size_bytes)
        except ObjectNotFoundError:
            reason = "nothing was uploaded yet: PUT the file to the upload URL first"
            raise ConflictError("object not uploaded", fields=[FieldError("file", reason)]) from None
        except LoraRejectedError as error:
            if not await self._reject(lora, error):
                # Another complete settled the version first: answer with what it decided.
                return await self.complete(owner_id, lora_id)
            raise lora_rejected(error.reason, error.message) from None
        view = await self._make_ready(lora, stored)
        if view is None:
            return await self.complete(owner_id, lora_id)
        await self._discard(lora.upload_key)
        return view

    async def import_object(self, request: LoraImport) -> LoraView:
        """Admin: verify an object already in the bucket and add it as a ready version of any live avatar.

        The source object is left in place; nothing is recorded when it is refused.
        """
        table = self.target_table(request.base_model)
        async with self._sessions() as session:
            avatar = await repository.get_live_avatar(session, request.avatar_id)
        if avatar is None:
            raise avatar_not_found()
        try:
            stored = await self._files.verify_and_store(request.object_key, table, declared_size=None)
        except ObjectNotFoundError:
            reason = "no object at this key"
            raise NotFoundError(reason, fields=[FieldError("object_key", reason)]) from None
        except LoraRejectedError as error:
            raise lora_rejected(error.reason, error.message) from None
        now = self._clock()
        lora = LoraModel(
            id=uuid.uuid4(),
            avatar_id=avatar.id,
            owner_id=avatar.owner_id,
            status=LoraStatus.READY.value,
            upload_key=request.object_key,
            base_model=request.base_model,
            default_scale=request.default_scale,
            trigger_words=list(request.trigger_words),
            activate_when_ready=request.activate,
            created_at=now,
            **ready_values(stored, now),
        )
        async with self._sessions() as session, session.begin():
            session.add(lora)
            await session.flush()
            view = await self._announce_ready(session, lora, now)
        self._on_commit()
        log.info("LoRA %s imported from the bucket for avatar %s", lora.id, avatar.id)
        return view

    async def activate(self, owner_id: str, lora_id: uuid.UUID) -> Avatar:
        """Make a ready version its avatar's active one (avatar.updated when it changes)."""
        async with self._sessions() as session, session.begin():
            lora = await repository.get_owned_lora(session, owner_id, lora_id)
            if lora is None:
                raise lora_not_found()
            avatar = await repository.get_owned_avatar(session, owner_id, lora.avatar_id, for_update=True)
            if avatar is None:
                raise lora_not_found()
            decisions.check_activatable(lora, avatar.id, field="lora_id")
            changed = avatar.active_lora_id != lora.id
            if changed:
                event = decisions.point_avatar_at(avatar, lora.id, self._clock(), str(lora.id))
                await add_to_outbox(session, outbox_table, event)
        if changed:
            self._on_commit()
            log.info("LoRA %s active for avatar %s", lora.id, avatar.id)
        return avatar

    async def retire(self, owner_id: str, lora_id: uuid.UUID) -> LoraView:
        """Retire a pending or ready version (lora.retired when it was ready); its avatar then has none active."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            lora = await repository.get_owned_lora(session, owner_id, lora_id, for_update=True)
            if lora is None:
                raise lora_not_found()
            if lora.status == LoraStatus.RETIRED.value:
                return await self._view(session, lora)
            if lora.status in (LoraStatus.REJECTED.value, LoraStatus.EXPIRED.value):
                raise ConflictError(f"a {lora.status} LoRA version cannot be retired; it is never used")
            if (retired := decisions.retire_version(lora, now)) is not None:
                await add_to_outbox(session, outbox_table, retired)
            avatar = await repository.get_owned_avatar(session, owner_id, lora.avatar_id, for_update=True)
            if avatar is not None and avatar.active_lora_id == lora.id:
                await add_to_outbox(session, outbox_table, decisions.point_avatar_at(avatar, None, now, str(lora.id)))
        self._on_commit()
        log.info("LoRA %s retired", lora.id)
        return LoraView(lora, False)

    async def _make_ready(self, lora: LoraModel, stored: StoredLora) -> LoraView | None:
        """Record the verified file and announce it; None when another call settled the version first."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            won = await repository.move_lora(
                session, lora.id, LoraStatus.PENDING_UPLOAD, LoraStatus.READY, **ready_values(stored, now)
            )
            ready = await repository.get_lora(session, lora.id)
            if not won or ready is None:
                return None
            view = await self._announce_ready(session, ready, now)
        self._on_commit()
        log.info("LoRA %s ready (%d bytes) at %s", ready.id, stored.verified.size_bytes, ready.object_key)
        return view

    async def _announce_ready(self, session: AsyncSession, ready: LoraModel, now: datetime) -> LoraView:
        """lora.ready, and the avatar pointed at the version (avatar.updated) when it asked to be activated."""
        await add_to_outbox(session, outbox_table, lora_event(LoraReady, ready))
        avatar = await repository.get_live_avatar(session, ready.avatar_id, for_update=True)
        if avatar is not None and ready.activate_when_ready:
            await add_to_outbox(session, outbox_table, decisions.point_avatar_at(avatar, ready.id, now, str(ready.id)))
        return LoraView(ready, avatar is not None and avatar.active_lora_id == ready.id)

    async def _reject(self, lora: LoraModel, error: LoraRejectedError) -> bool:
        """Record why the file was refused and delete the upload (nothing is announced); False when another call
        settled the version first."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            won = await repository.move_lora(
                session,
                lora.id,
                LoraStatus.PENDING_UPLOAD,
                LoraStatus.REJECTED,
                rejection_reason=error.reason,
                rejection_message=error.message,
                updated_at=now,
            )
        if won:
            log.info("LoRA %s rejected: %s", lora.id, error.reason)
            await self._discard(lora.upload_key)
        return won

    async def _discard(self, key: str) -> None:
        # Best effort: a leftover upload object is never used (nothing points at it), and the retention loop deletes
        # it once the registration's expiry has passed; failing the request over it would only make the client retry.
        try:
            await self._files.discard(key)
        except Exception as error:
            log.warning("could not delete the upload object of a completed LoRA: %s", type(error).__name__)

    async def _view(self, session: AsyncSession, lora: LoraModel) -> LoraView:
        avatar = await repository.get_live_avatar(session, lora.avatar_id)
        return LoraView(lora, avatar is not None and avatar.active_lora_id == lora.id)
