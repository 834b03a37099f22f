"""The identity projection on SQLite: avatar.* and lora.* events into content's rows, each once, newest wins."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import (
    AvatarCreated,
    AvatarDeleted,
    AvatarUpdated,
    EventPayload,
    GenerationStarted,
    LoraReady,
    LoraRetired,
)
from contracts.object_keys import lora_object_key
from services.common.http.errors import NotFoundError
from services.common.messaging.events import new_event
from services.content.decisions import UnexpectedEventError
from services.content.models import Base, inbox_table
from services.content.projection import IdentityProjection
from tests.support.identity.events import ready_avatar_events
from tests.support.sqlite import sqlite_sessions

SHA = "cd" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)
OWNER = "o1"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "content.db", Base.metadata) as factory:
        yield factory


@pytest.fixture
def projection(sessions: async_sessionmaker[AsyncSession]) -> IdentityProjection:
    return IdentityProjection(sessions, clock=lambda: T0)


def _pair(payload: EventPayload, time: datetime = T0) -> tuple[EventEnvelope, EventPayload]:
    return new_event(payload, source="/vixenbliss/identity", subject="s", time=time), payload


async def _known_avatar(projection: IdentityProjection, owner_id: str = OWNER) -> tuple[uuid.UUID, str]:
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    events = ready_avatar_events(avatar_id, lora_id, time=T0, step=timedelta(seconds=1), sha256=SHA, owner_id=owner_id)
    for payload, time in events:
        await projection.apply(*_pair(payload, time))
    return uuid.UUID(avatar_id), lora_id


async def _inbox_rows(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(inbox_table)) or 0)


async def test_identity_events_make_an_avatar_known_and_then_ready(projection: IdentityProjection) -> None:
    avatar_id = uuid.uuid4()
    with pytest.raises(NotFoundError):
        await projection.avatar_status(OWNER, avatar_id)

    await projection.apply(*_pair(AvatarCreated(avatar_id=str(avatar_id), owner_id=OWNER, name="V")))
    status = await projection.avatar_status(OWNER, avatar_id)
    assert (status.ready, status.avatar.name, status.avatar.active_lora_id) == (False, "V", None)

    known_id, lora_id = await _known_avatar(projection)
    status = await projection.avatar_status(OWNER, known_id)
    assert status.ready is True and status.avatar.active_lora_id == lora_id


async def test_someone_elses_avatar_is_not_found(projection: IdentityProjection) -> None:
    avatar_id, _ = await _known_avatar(projection, owner_id="o2")

    with pytest.raises(NotFoundError):
        await projection.avatar_status(OWNER, avatar_id)
    assert (await projection.avatar_status("o2", avatar_id)).ready


async def test_an_identity_event_applied_twice_is_recorded_once(
    projection: IdentityProjection, sessions: async_sessionmaker[AsyncSession]
) -> None:
    avatar_id = str(uuid.uuid4())
    envelope, payload = _pair(AvatarCreated(avatar_id=avatar_id, owner_id=OWNER, name="V"))

    await projection.apply(envelope, payload)
    await projection.apply(envelope, payload)

    assert await _inbox_rows(sessions) == 1


async def test_a_redelivered_old_event_does_not_undo_a_newer_one(projection: IdentityProjection) -> None:
    avatar_id = uuid.uuid4()
    created = _pair(AvatarCreated(avatar_id=str(avatar_id), owner_id=OWNER, name="first"), T0)
    renamed = AvatarUpdated(avatar_id=str(avatar_id), owner_id=OWNER, name="second")
    await projection.apply(*created)
    await projection.apply(*_pair(renamed, T0 + timedelta(seconds=1)))

    await projection.apply(*created)  # the same event again: the inbox drops it

    assert (await projection.avatar_status(OWNER, avatar_id)).avatar.name == "second"


async def test_an_older_avatar_event_arriving_late_does_not_undo_a_newer_one(projection: IdentityProjection) -> None:
    avatar_id, lora_id = await _known_avatar(projection)
    stale = AvatarCreated(avatar_id=str(avatar_id), owner_id=OWNER, name="Vixen", active_lora_model_id=None)

    await projection.apply(*_pair(stale, T0 - timedelta(seconds=5)))

    assert (await projection.avatar_status(OWNER, avatar_id)).avatar.active_lora_id == lora_id


async def test_a_deleted_avatar_stays_deleted_and_is_not_ready(projection: IdentityProjection) -> None:
    avatar_id, lora_id = await _known_avatar(projection)
    await projection.apply(*_pair(AvatarDeleted(avatar_id=str(avatar_id), owner_id=OWNER, name="Vixen"), T0))

    revived = AvatarUpdated(avatar_id=str(avatar_id), owner_id=OWNER, name="Vixen", active_lora_model_id=lora_id)
    await projection.apply(*_pair(revived, T0 + timedelta(days=1)))

    status = await projection.avatar_status(OWNER, avatar_id)
    assert (status.avatar.deleted, status.ready) == (True, False)


async def test_a_retired_lora_makes_the_avatar_unready_for_good(projection: IdentityProjection) -> None:
    avatar_id, lora_id = await _known_avatar(projection)
    fields = {
        "lora_model_id": lora_id,
        "avatar_id": str(avatar_id),
        "owner_id": OWNER,
        "object_key": lora_object_key(SHA),
        "sha256": SHA,
        "size_bytes": 1000,
        "base_model": "sdxl-base-1.0",
    }
    await projection.apply(*_pair(LoraRetired(**fields), T0 + timedelta(seconds=5)))
    assert (await projection.avatar_status(OWNER, avatar_id)).ready is False

    await projection.apply(*_pair(LoraReady(**fields), T0 + timedelta(seconds=6)))

    assert (await projection.avatar_status(OWNER, avatar_id)).ready is False


async def test_a_payload_that_is_not_an_identity_event_is_refused_and_not_marked(
    projection: IdentityProjection, sessions: async_sessionmaker[AsyncSession]
) -> None:
    started = GenerationStarted(generation_id=str(uuid.uuid4()), attempt=1, worker_mode="sync")

    with pytest.raises(UnexpectedEventError):
        await projection.apply(*_pair(started))

    assert await _inbox_rows(sessions) == 0


async def test_the_owners_avatars_list_newest_first_with_names_and_readiness_and_pages(
    projection: IdentityProjection,
) -> None:
    ready_id, _ = await _known_avatar(projection)  # created at T0
    later = [uuid.uuid4() for _ in range(2)]
    for offset, avatar_id in enumerate(later, start=1):
        created = AvatarCreated(avatar_id=str(avatar_id), owner_id=OWNER, name=f"later {offset}")
        await projection.apply(*_pair(created, T0 + timedelta(minutes=offset)))
    gone = uuid.uuid4()
    await projection.apply(*_pair(AvatarCreated(avatar_id=str(gone), owner_id=OWNER, name="gone"), T0))
    await projection.apply(*_pair(AvatarDeleted(avatar_id=str(gone), owner_id=OWNER, name="gone"), T0))
    await _known_avatar(projection, owner_id="o2")
    # A later rename does not move an avatar up: the order is when content first heard of it.
    renamed = AvatarUpdated(avatar_id=str(ready_id), owner_id=OWNER, name="renamed", active_lora_model_id=None)
    await projection.apply(*_pair(renamed, T0 + timedelta(hours=1)))

    first = await projection.list_avatars(OWNER, limit=2, cursor=None)
    assert first.next_cursor is not None
    rest = await projection.list_avatars(OWNER, limit=2, cursor=first.next_cursor)

    listed = [(s.avatar.id, s.avatar.name, s.ready) for s in [*first.items, *rest.items]]
    assert listed == [
        (str(later[1]), "later 2", False),
        (str(later[0]), "later 1", False),
        (str(ready_id), "renamed", False),  # the rename took its active LoRA away
    ]
    assert rest.next_cursor is None
    everything = await projection.list_avatars("o2", limit=10, cursor=None)
    assert [s.ready for s in everything.items] == [True]
