"""The identity projection: avatar.* and lora.* events into content's own rows, and what they say about an avatar."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import AvatarEvent, EventPayload, EventType, LoraEvent
from contracts.topology import CONTENT_IDENTITY_EVENTS
from services.common.http.errors import NotFoundError
from services.common.http.pagination import Cursor, Page, page_of
from services.content import decisions, repository
from services.content.clock import utc_now
from services.content.decisions import UnexpectedEventError
from services.content.inbox import mark_processed
from services.content.models import AvatarProjection, LoraProjection, LoraState, inbox_table


@dataclass(frozen=True)
class AvatarStatus:
    """A projected avatar and whether a generation for it would be accepted."""

    avatar: AvatarProjection
    ready: bool


class IdentityProjection:
    """What content knows of identity's avatars and LoRAs, kept from their events (each applied once)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    async def avatar_status(self, owner_id: str, avatar_id: uuid.UUID) -> AvatarStatus:
        """What the projection knows of the owner's avatar; 404 until identity's events arrived, or when it is
        someone else's."""
        async with self._sessions() as session:
            avatar = await repository.get_avatar(session, str(avatar_id))
            if avatar is None or avatar.owner_id != owner_id:
                raise NotFoundError("unknown avatar")
            lora = await repository.get_lora(session, avatar.active_lora_id) if avatar.active_lora_id else None
        return AvatarStatus(avatar, decisions.avatar_is_ready(avatar, lora))

    async def list_avatars(self, owner_id: str, *, limit: int, cursor: str | None) -> Page[AvatarStatus]:
        """A page of the owner's avatars content knows (deleted ones left out), newest first, each with whether a
        generation for it would be accepted now."""
        after = Cursor.decode(cursor) if cursor else None
        async with self._sessions() as session:
            rows = await repository.list_avatars(session, owner_id, limit=limit + 1, after=after)
            page = page_of(rows, limit)
            lora_ids = [avatar.active_lora_id for avatar in page.items if avatar.active_lora_id]
            loras = await repository.get_loras(session, lora_ids)
        items = [
            AvatarStatus(avatar, decisions.avatar_is_ready(avatar, loras.get(avatar.active_lora_id or "")))
            for avatar in page.items
        ]
        return Page(items, page.next_cursor)

    async def apply(self, envelope: EventEnvelope, payload: EventPayload) -> None:
        """Project an avatar.* or lora.* event, once (inbox), in one transaction."""
        event_type = EventType(envelope.type)
        async with self._sessions() as session, session.begin():
            if not await mark_processed(session, inbox_table, envelope.id, CONTENT_IDENTITY_EVENTS):
                return
            if isinstance(payload, AvatarEvent):
                await self._project_avatar(session, payload, event_type, envelope.time)
            elif isinstance(payload, LoraEvent):
                await self._project_lora(session, payload, event_type)
            else:
                raise UnexpectedEventError(f"{envelope.type} is not an identity event")

    async def _project_avatar(
        self, session: AsyncSession, payload: AvatarEvent, event_type: EventType, event_time: datetime
    ) -> None:
        row = await repository.get_avatar(session, payload.avatar_id, for_update=True)
        decisions.check_avatar_event(row, payload)
        if not decisions.avatar_event_applies(row, event_type, event_time):
            return
        if row is None:
            row = AvatarProjection(id=payload.avatar_id, deleted=False, created_at=event_time)
            session.add(row)
        row.owner_id = payload.owner_id
        row.name = payload.name
        row.active_lora_id = payload.active_lora_model_id
        row.deleted = event_type is EventType.AVATAR_DELETED
        row.source_time = event_time
        row.updated_at = self._clock()

    async def _project_lora(self, session: AsyncSession, payload: LoraEvent, event_type: EventType) -> None:
        row = await repository.get_lora(session, payload.lora_model_id, for_update=True)
        decisions.check_lora_event(row, await repository.get_avatar(session, payload.avatar_id), payload)
        if not decisions.lora_event_applies(row):
            return
        if row is None:
            row = LoraProjection(id=payload.lora_model_id)
            session.add(row)
        row.avatar_id = payload.avatar_id
        row.owner_id = payload.owner_id
        row.object_key = payload.object_key
        row.sha256 = payload.sha256
        row.size_bytes = payload.size_bytes
        row.base_model = payload.base_model
        row.default_scale = payload.default_scale
        retired = event_type is EventType.LORA_RETIRED
        row.status = (LoraState.RETIRED if retired else LoraState.READY).value
        row.updated_at = self._clock()
