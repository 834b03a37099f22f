"""Identity use cases for avatars: create, get, list, update (name, description, active version), delete."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import AvatarCreated, AvatarDeleted, AvatarUpdated
from services.common.http.errors import FieldError, InvalidRequestError
from services.common.http.pagination import Cursor, Page, page_of
from services.common.messaging.outbox import add_to_outbox
from services.identity import decisions, repository
from services.identity.clock import Clock, utc_now
from services.identity.errors import avatar_not_found
from services.identity.events import avatar_event
from services.identity.models import Avatar, LoraModel, LoraStatus, outbox_table
from services.identity.quotas import DEFAULT_QUOTAS, OwnerQuotas, check_avatar_quota
from services.identity.schemas import AvatarCreate, AvatarUpdate

log = logging.getLogger(__name__)


async def _retire_versions(session: AsyncSession, avatar: Avatar, now: datetime) -> list[LoraModel]:
    """Retire every pending or ready version of the avatar."""
    retired = await repository.loras_with_status(session, avatar.id, (LoraStatus.PENDING_UPLOAD, LoraStatus.READY))
    for lora in retired:
        if (event := decisions.retire_version(lora, now)) is not None:
            await add_to_outbox(session, outbox_table, event)
    return retired


class AvatarService:
    """A creator's avatars; every change and its events commit together (outbox)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        quotas: OwnerQuotas = DEFAULT_QUOTAS,
        on_commit: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
    ) -> None:
        self._sessions = sessions
        self._quotas = quotas
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock

    async def create(self, owner_id: str, request: AvatarCreate) -> Avatar:
        """Create an avatar for the caller and announce it (avatar.created); 409 TOO_MANY_AVATARS past the quota.

        The owner's lock row is taken before counting, so concurrent creates cannot all see room for one more.
        """
        now = self._clock()
        avatar = Avatar(
            id=uuid.uuid4(),
            owner_id=owner_id,
            name=request.name,
            description=request.description,
            active_lora_id=None,
            created_at=now,
            updated_at=now,
        )
        async with self._sessions() as session, session.begin():
            await repository.lock_owner(session, owner_id, now)
            check_avatar_quota(await repository.count_live_avatars(session, owner_id), self._quotas)
            session.add(avatar)
            await add_to_outbox(session, outbox_table, avatar_event(AvatarCreated, avatar, str(avatar.id)))
        self._on_commit()
        log.info("avatar %s created", avatar.id)
        return avatar

    async def get(self, owner_id: str, avatar_id: uuid.UUID) -> Avatar:
        """The caller's avatar; NotFoundError otherwise."""
        async with self._sessions() as session:
            avatar = await repository.get_owned_avatar(session, owner_id, avatar_id)
        if avatar is None:
            raise avatar_not_found()
        return avatar

    async def list(self, owner_id: str, limit: int, cursor: str | None) -> Page[Avatar]:
        """One page of the caller's avatars, newest first."""
        after = Cursor.decode(cursor) if cursor else None
        async with self._sessions() as session:
            rows = await repository.list_owned_avatars(session, owner_id, after, limit)
        return page_of(rows, limit)

    async def update(self, owner_id: str, avatar_id: uuid.UUID, request: AvatarUpdate) -> Avatar:
        """Change the fields sent; announce the avatar (avatar.updated) when anything changed."""
        sent = request.model_fields_set
        if "name" in sent and request.name is None:
            raise InvalidRequestError("name cannot be null", fields=[FieldError("name", "cannot be null")])
        async with self._sessions() as session, session.begin():
            avatar = await repository.get_owned_avatar(session, owner_id, avatar_id, for_update=True)
            if avatar is None:
                raise avatar_not_found()
            before = (avatar.name, avatar.description, avatar.active_lora_id)
            if request.name is not None:
                avatar.name = request.name
            if "description" in sent:
                avatar.description = request.description
            if "active_lora_id" in sent:
                if request.active_lora_id is None:
                    avatar.active_lora_id = None
                else:
                    lora = await repository.get_lora(session, request.active_lora_id)
                    avatar.active_lora_id = decisions.check_activatable(lora, avatar.id).id
            if (avatar.name, avatar.description, avatar.active_lora_id) != before:
                avatar.updated_at = self._clock()
            # The event carries the name and the active version: a new description alone is no news to anyone.
            announced = (avatar.name, avatar.active_lora_id) != (before[0], before[2])
            if announced:
                await add_to_outbox(session, outbox_table, avatar_event(AvatarUpdated, avatar, str(avatar.id)))
        if announced:
            self._on_commit()
        log.info("avatar %s updated", avatar.id)
        return avatar

    async def delete(self, owner_id: str, avatar_id: uuid.UUID) -> None:
        """Delete the avatar (soft) and retire its versions: avatar.deleted, then lora.retired for each ready one."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            avatar = await repository.get_owned_avatar(session, owner_id, avatar_id, for_update=True)
            if avatar is None:
                raise avatar_not_found()
            avatar.deleted_at, avatar.updated_at = now, now
            await add_to_outbox(session, outbox_table, avatar_event(AvatarDeleted, avatar, str(avatar.id)))
            retired = await _retire_versions(session, avatar, now)
        self._on_commit()
        log.info("avatar %s deleted; %d LoRA versions retired", avatar.id, len(retired))
