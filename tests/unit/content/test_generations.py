"""Content use cases on SQLite: projection from identity events, generate with its outbox row, results, URLs."""

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
    EventPayload,
    GenerationCompleted,
    GenerationRequested,
    GenerationStarted,
    ImageRef,
)
from contracts.worker import ModelInfo
from services.common.events import new_event, parse_event
from services.common.http_errors import ConflictError, InvalidRequestError, NotFoundError
from services.content.models import Base, inbox_table, outbox_table
from services.content.schemas import GenerateRequest
from services.content.service import ContentPolicy, ContentService, UnexpectedEventError
from tests.support.identity_events import ready_avatar_events
from tests.support.sqlite import sqlite_sessions

SHA = "cd" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeImages:
    def __init__(self, public: str | None = None) -> None:
        self.public = public
        self.signed: list[tuple[str, int]] = []

    def public_url(self, key: str) -> str | None:
        return f"{self.public}/{key}" if self.public else None

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        self.signed.append((key, ttl_seconds))
        return f"https://s3.test/bucket/{key}?X-Amz-Signature=abc"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "content.db", Base.metadata) as factory:
        yield factory


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def service(sessions: async_sessionmaker[AsyncSession], images: FakeImages) -> ContentService:
    return ContentService(sessions, images, ContentPolicy(600, 3600), seed_source=lambda: 1234)


def _event(payload: EventPayload, time: datetime = T0) -> EventEnvelope:
    return new_event(payload, source="/vixenbliss/identity", subject="s", time=time)


async def _known_avatar(service: ContentService, scale: float = 0.6) -> tuple[str, str]:
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    events = ready_avatar_events(avatar_id, lora_id, time=T0, step=timedelta(seconds=1), scale=scale, sha256=SHA)
    for payload, time in events:
        await service.apply_identity_event(*_pair(payload, time))
    return avatar_id, lora_id


def _pair(payload: EventPayload, time: datetime = T0) -> tuple[EventEnvelope, EventPayload]:
    return _event(payload, time), payload


async def _outbox(sessions: async_sessionmaker[AsyncSession]) -> list[EventPayload]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_table).order_by(outbox_table.c.id))).mappings().all()
    return [parse_event(row["body"], row["content_type"], row["headers"])[1] for row in rows]


async def test_identity_events_make_an_avatar_known_and_then_ready(service: ContentService) -> None:
    avatar_id = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await service.avatar_status(uuid.UUID(avatar_id))

    await service.apply_identity_event(*_pair(AvatarCreated(avatar_id=avatar_id, owner_id="o1", name="V")))
    assert (await service.avatar_status(uuid.UUID(avatar_id))).ready is False

    known_id, lora_id = await _known_avatar(service)
    status = await service.avatar_status(uuid.UUID(known_id))
    assert status.ready is True and status.avatar.active_lora_id == lora_id


async def test_an_identity_event_applied_twice_is_recorded_once(
    service: ContentService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    avatar_id = str(uuid.uuid4())
    envelope, payload = _pair(AvatarCreated(avatar_id=avatar_id, owner_id="o1", name="V"))

    await service.apply_identity_event(envelope, payload)
    await service.apply_identity_event(envelope, payload)

    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(inbox_table)) == 1


async def test_an_older_avatar_event_arriving_late_does_not_undo_a_newer_one(service: ContentService) -> None:
    avatar_id, lora_id = await _known_avatar(service)
    stale = AvatarCreated(avatar_id=avatar_id, owner_id="o1", name="Vixen", active_lora_model_id=None)

    await service.apply_identity_event(*_pair(stale, T0 - timedelta(seconds=5)))

    assert (await service.avatar_status(uuid.UUID(avatar_id))).avatar.active_lora_id == lora_id


async def test_generate_writes_the_row_and_exactly_one_generation_requested(
    service: ContentService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    avatar_id, lora_id = await _known_avatar(service, scale=0.6)

    generation = await service.request_generation(
        GenerateRequest(avatar_id=uuid.UUID(avatar_id), prompt="a portrait", width=64, height=64, steps=2)
    )

    assert (generation.status, generation.seed) == ("queued", 1234)
    events = await _outbox(sessions)
    assert len(events) == 1
    requested = events[0]
    assert isinstance(requested, GenerationRequested)
    assert requested.generation_id == str(generation.id)
    assert requested.lora is not None and (requested.lora.lora_model_id, requested.lora.scale) == (lora_id, 0.6)
    assert requested.params.seed == 1234 and requested.params.width == 64
    assert requested.deadline - requested.requested_at == timedelta(seconds=600)


async def test_generate_for_an_unknown_or_deleted_avatar_is_refused_without_any_event(
    service: ContentService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    with pytest.raises(InvalidRequestError, match="unknown avatar"):
        await service.request_generation(GenerateRequest(avatar_id=uuid.uuid4(), prompt="x"))
    avatar_id, _ = await _known_avatar(service)
    deleted = AvatarDeleted(avatar_id=avatar_id, owner_id="o1", name="Vixen")
    await service.apply_identity_event(*_pair(deleted, T0 + timedelta(seconds=2)))
    with pytest.raises(InvalidRequestError, match="deleted"):
        await service.request_generation(GenerateRequest(avatar_id=uuid.UUID(avatar_id), prompt="x"))
    assert await _outbox(sessions) == []


async def test_generate_for_an_avatar_without_a_ready_lora_is_a_conflict(service: ContentService) -> None:
    avatar_id = str(uuid.uuid4())
    await service.apply_identity_event(*_pair(AvatarCreated(avatar_id=avatar_id, owner_id="o1", name="V")))

    with pytest.raises(ConflictError):
        await service.request_generation(GenerateRequest(avatar_id=uuid.UUID(avatar_id), prompt="x"))


def _completed(generation_id: str) -> GenerationCompleted:
    return GenerationCompleted(
        generation_id=generation_id,
        image=ImageRef(object_key=f"outputs/{generation_id}.png", sha256=SHA, width=64, height=64, size_bytes=10),
        generation_time_seconds=0.5,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=0.6),
    )


async def test_a_completed_generation_gets_a_presigned_url_made_at_read_time(
    service: ContentService, images: FakeImages
) -> None:
    avatar_id, _ = await _known_avatar(service)
    generation = await service.request_generation(GenerateRequest(avatar_id=uuid.UUID(avatar_id), prompt="x"))
    assert (await service.get_generation(generation.id)).image_url is None

    await service.apply_generation_result(*_pair(_completed(str(generation.id))))
    view = await service.get_generation(generation.id)

    key = f"outputs/{generation.id}.png"
    assert view.generation.status == "completed"
    assert view.image_url is not None and key in view.image_url
    assert images.signed == [(key, 3600)]


async def test_a_public_bucket_url_is_used_instead_of_signing(sessions: async_sessionmaker[AsyncSession]) -> None:
    images = FakeImages(public="https://cdn.example")
    service = ContentService(sessions, images, ContentPolicy(600, 3600))
    avatar_id, _ = await _known_avatar(service)
    generation = await service.request_generation(GenerateRequest(avatar_id=uuid.UUID(avatar_id), prompt="x"))
    await service.apply_generation_result(*_pair(_completed(str(generation.id))))

    view = await service.get_generation(generation.id)

    assert view.image_url == f"https://cdn.example/outputs/{generation.id}.png"
    assert images.signed == []


async def test_a_result_for_a_generation_content_never_issued_is_refused_and_not_marked(
    service: ContentService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    for generation_id in (str(uuid.uuid4()), "not-a-uuid"):
        started = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
        with pytest.raises(UnexpectedEventError):
            await service.apply_generation_result(*_pair(started))
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(inbox_table)) == 0
