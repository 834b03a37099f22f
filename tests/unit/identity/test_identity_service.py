"""Identity use cases on SQLite with an in-memory object store: what is accepted, what changes, what is emitted."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import AvatarCreated, AvatarUpdated, EventPayload, LoraReady
from services.common.events import parse_event
from services.common.http_errors import ConflictError, InvalidRequestError, NotFoundError
from services.common.storage import ObjectInfo, ObjectNotFoundError
from services.identity.models import Base, LoraStatus, outbox_table
from services.identity.schemas import LoraCreate
from services.identity.service import IdentityService, LoraLimits, lora_object_key
from tests.support.safetensors_bytes import safetensors_bytes
from tests.support.sqlite import sqlite_sessions

MAX_BYTES = 64 * 1024


class FakeObjects:
    """An object store in a dict; presigned URLs look like real ones."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.presigned: list[str] = []

    async def presign_put(self, key: str, ttl_seconds: int, content_type: str | None = None) -> str:
        url = f"https://s3.test/bucket/{key}?X-Amz-Expires={ttl_seconds}&X-Amz-Signature=deadbeef"
        self.presigned.append(url)
        return url

    async def head(self, key: str, *, compute_sha256: bool = False) -> ObjectInfo:
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        data = self.objects[key]
        digest = hashlib.sha256(data).hexdigest() if compute_sha256 else None
        return ObjectInfo(key, len(data), digest, None, None)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        return self.objects[key][start : start + length]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "identity.db", Base.metadata) as factory:
        yield factory


@pytest.fixture
def objects() -> FakeObjects:
    return FakeObjects()


@pytest.fixture
def service(sessions: async_sessionmaker[AsyncSession], objects: FakeObjects) -> IdentityService:
    return IdentityService(sessions, objects, LoraLimits(max_bytes=MAX_BYTES, upload_url_ttl_seconds=900))


async def _outbox(sessions: async_sessionmaker[AsyncSession]) -> list[EventPayload]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_table).order_by(outbox_table.c.id))).mappings().all()
    return [parse_event(row["body"], row["content_type"], row["headers"])[1] for row in rows]


async def _registered(service: IdentityService, objects: FakeObjects, data: bytes | None) -> uuid.UUID:
    avatar = await service.create_avatar(uuid.uuid4(), "Vixen")
    registration = await service.register_lora(avatar.id, LoraCreate(default_scale=0.8, trigger_words=["vxn"]))
    if data is not None:
        objects.objects[registration.lora.object_key] = data
    return registration.lora.id


async def test_creating_an_avatar_stages_avatar_created_in_the_outbox(
    service: IdentityService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = uuid.uuid4()
    avatar = await service.create_avatar(owner, "Vixen")

    assert avatar.active_lora_id is None
    assert await _outbox(sessions) == [
        AvatarCreated(avatar_id=str(avatar.id), owner_id=str(owner), name="Vixen", active_lora_model_id=None)
    ]


async def test_a_commit_that_wrote_events_wakes_the_relay(sessions: async_sessionmaker[AsyncSession]) -> None:
    woken: list[str] = []
    service = IdentityService(sessions, FakeObjects(), LoraLimits(MAX_BYTES, 900), on_commit=lambda: woken.append("x"))

    await service.create_avatar(uuid.uuid4(), "Vixen")

    assert woken == ["x"]


async def test_registering_a_lora_gives_a_key_under_the_avatar_and_a_put_url_it_does_not_store(
    service: IdentityService, objects: FakeObjects, sessions: async_sessionmaker[AsyncSession]
) -> None:
    avatar = await service.create_avatar(uuid.uuid4(), "Vixen")

    registration = await service.register_lora(avatar.id, LoraCreate())

    lora = registration.lora
    assert lora.status == LoraStatus.PENDING_UPLOAD
    assert lora.object_key == lora_object_key(avatar.id, lora.id) == f"loras/{avatar.id}/{lora.id}.safetensors"
    assert registration.upload_url == objects.presigned[-1]
    assert registration.upload_expires_in == 900
    async with sessions() as session:
        dump = repr([tuple(r) for r in (await session.execute(select(Base.metadata.tables["lora_models"]))).all()])
    assert "X-Amz-Signature" not in dump and "s3.test" not in dump


async def test_a_declared_size_over_the_cap_is_refused_before_any_url_is_signed(
    service: IdentityService, objects: FakeObjects
) -> None:
    avatar = await service.create_avatar(uuid.uuid4(), "Vixen")

    with pytest.raises(InvalidRequestError) as caught:
        await service.register_lora(avatar.id, LoraCreate(size_bytes=MAX_BYTES + 1))

    assert [f.field for f in caught.value.fields] == ["size_bytes"]
    assert objects.presigned == []


async def test_registering_for_an_unknown_avatar_is_not_found(service: IdentityService) -> None:
    with pytest.raises(NotFoundError):
        await service.register_lora(uuid.uuid4(), LoraCreate())


async def test_completing_before_the_upload_is_a_conflict(service: IdentityService, objects: FakeObjects) -> None:
    lora_id = await _registered(service, objects, data=None)

    with pytest.raises(ConflictError, match="object not uploaded"):
        await service.complete_lora(lora_id)


async def test_completing_a_valid_upload_marks_it_ready_activates_it_and_emits_both_events(
    service: IdentityService, objects: FakeObjects, sessions: async_sessionmaker[AsyncSession]
) -> None:
    data = safetensors_bytes()
    lora_id = await _registered(service, objects, data)

    lora = await service.complete_lora(lora_id)

    assert lora.status == LoraStatus.READY
    assert (lora.sha256, lora.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    avatar = await service.get_avatar(lora.avatar_id)
    assert avatar.active_lora_id == lora_id
    events = await _outbox(sessions)
    assert [type(e) for e in events] == [AvatarCreated, LoraReady, AvatarUpdated]
    ready, updated = events[1], events[2]
    assert isinstance(ready, LoraReady) and isinstance(updated, AvatarUpdated)
    assert ready.sha256 == lora.sha256 and ready.size_bytes == len(data) and ready.object_key == lora.object_key
    assert ready.default_scale == 0.8 and ready.trigger_words == ["vxn"]
    assert updated.active_lora_model_id == str(lora_id)


async def test_completing_twice_returns_the_same_lora_and_emits_nothing_new(
    service: IdentityService, objects: FakeObjects, sessions: async_sessionmaker[AsyncSession]
) -> None:
    lora_id = await _registered(service, objects, safetensors_bytes())
    first = await service.complete_lora(lora_id)
    count = len(await _outbox(sessions))

    second = await service.complete_lora(lora_id)

    assert (second.id, second.sha256, second.ready_at) == (first.id, first.sha256, first.ready_at)
    assert len(await _outbox(sessions)) == count


async def test_a_file_that_is_not_safetensors_is_refused_and_stays_pending(
    service: IdentityService, objects: FakeObjects
) -> None:
    lora_id = await _registered(service, objects, b"PK\x03\x04 this is a zip, not a LoRA" * 10)

    with pytest.raises(InvalidRequestError, match="not a safetensors file") as caught:
        await service.complete_lora(lora_id)

    assert [f.field for f in caught.value.fields] == ["object_key"]
    assert (await service.get_lora(lora_id)).status == LoraStatus.PENDING_UPLOAD


async def test_an_upload_over_the_cap_is_refused_at_completion(service: IdentityService, objects: FakeObjects) -> None:
    big = safetensors_bytes({"t": ("F32", [MAX_BYTES // 4 + 1])})
    lora_id = await _registered(service, objects, big)

    with pytest.raises(InvalidRequestError, match="too large"):
        await service.complete_lora(lora_id)


async def test_an_upload_whose_size_differs_from_the_declared_one_is_refused(
    service: IdentityService, objects: FakeObjects
) -> None:
    avatar = await service.create_avatar(uuid.uuid4(), "Vixen")
    data = safetensors_bytes()
    registration = await service.register_lora(avatar.id, LoraCreate(size_bytes=len(data) + 1))
    objects.objects[registration.lora.object_key] = data

    with pytest.raises(InvalidRequestError, match="declared"):
        await service.complete_lora(registration.lora.id)


async def test_unknown_ids_are_not_found(service: IdentityService) -> None:
    with pytest.raises(NotFoundError):
        await service.get_avatar(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await service.get_lora(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await service.complete_lora(uuid.uuid4())
