"""Content's generation use cases on SQLite, for content's unit tests: their harness, a stand-in image store, and
helpers that make avatars known, submit, read the outbox, and check that a refused submit wrote nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import EventPayload, GenerationCompleted, GenerationStarted, ImageRef
from contracts.object_keys import generation_image_key
from contracts.worker import ModelInfo, Timings
from services.common.http.errors import DomainError
from services.common.messaging.events import new_event, parse_event
from services.content.admission import AdmissionLimits
from services.content.cancel import OwnerCancel
from services.content.changes import ChangeFeed, ChangeHub
from services.content.models import Generation, IdempotencyKey, OwnerQuota, outbox_table
from services.content.projection import IdentityProjection
from services.content.reads import GenerationReads
from services.content.results import ResultApplier
from services.content.schemas import GenerateRequest
from services.content.submit import Submissions
from services.content.sweeper import SweeperChores
from tests.support.content.units import LIMITS, T0, Clock
from tests.support.identity.events import ready_avatar_events

SHA = "cd" * 32
DEADLINE = 600
URL_TTL = 3600
OWNER, OTHER = "o1", "o2"
GATEWAY = "/vixenbliss/inference-gateway"


class StandInImageStore:
    """A stand-in for the object storage: URLs it would give, and the images it was asked to delete."""

    def __init__(self, public: str | None = None) -> None:
        self.public = public
        self.signed: list[tuple[str, int]] = []
        self.deleted: list[str] = []
        self.failing_deletes = 0

    def public_url(self, key: str) -> str | None:
        return f"{self.public}/{key}" if self.public else None

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        self.signed.append((key, ttl_seconds))
        return f"https://s3.test/bucket/{key}?X-Amz-Signature=abc"

    async def delete(self, key: str) -> None:
        if self.failing_deletes:
            self.failing_deletes -= 1
            raise ConnectionError("storage unreachable")
        self.deleted.append(key)


class RecordingHub(ChangeHub):
    """A real hub that also remembers every key it was told of, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.notified: list[str] = []

    def notify(self, key: str) -> None:
        self.notified.append(key)
        super().notify(key)


@dataclass(frozen=True)
class Generations:
    """Content's generation use cases over one database, wired as main.py wires them."""

    submissions: Submissions
    reads: GenerationReads
    owner_cancel: OwnerCancel
    results: ResultApplier
    chores: SweeperChores


@dataclass
class Harness:
    """The use cases' surroundings: their database, clock, image store, change hub and feed, the identity
    projection, and one entry per commit that woke the relay."""

    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    images: StandInImageStore
    hub: RecordingHub
    feed: ChangeFeed
    projection: IdentityProjection
    commits: list[None]

    def generations(self, limits: AdmissionLimits = LIMITS, feed: ChangeFeed | None = None) -> Generations:
        changes = feed or self.feed
        reads = GenerationReads(self.sessions, self.images, URL_TTL)
        chores = SweeperChores(
            self.sessions,
            self.images,
            changes,
            idempotency_ttl_seconds=limits.idempotency_ttl_seconds,
            clock=self.clock,
        )
        return Generations(
            submissions=Submissions(
                self.sessions,
                reads,
                limits,
                changes,
                deadline_seconds=DEADLINE,
                on_commit=lambda: self.commits.append(None),
                clock=self.clock,
                seed_source=lambda: 1234,
            ),
            reads=reads,
            owner_cancel=OwnerCancel(
                self.sessions, reads, changes, on_commit=lambda: self.commits.append(None), clock=self.clock
            ),
            results=ResultApplier(self.sessions, changes, chores, clock=self.clock),
            chores=chores,
        )


def _pair(
    payload: EventPayload, time: datetime = T0, source: str = "/vixenbliss/identity"
) -> tuple[EventEnvelope, EventPayload]:
    return new_event(payload, source=source, subject="s", time=time), payload


async def _ready_avatar(h: Harness, owner_id: str = OWNER, scale: float = 0.6) -> tuple[uuid.UUID, str]:
    """An avatar of `owner_id` with a ready LoRA, as identity's events make it known; (avatar id, LoRA id)."""
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    events = ready_avatar_events(
        avatar_id, lora_id, time=T0, step=timedelta(seconds=1), scale=scale, sha256=SHA, owner_id=owner_id
    )
    for payload, time in events:
        await h.projection.apply(*_pair(payload, time))
    return uuid.UUID(avatar_id), lora_id


def _request(avatar_id: uuid.UUID, **fields: Any) -> GenerateRequest:
    return GenerateRequest.model_validate({"avatar_id": str(avatar_id), "prompt": "a portrait", **fields})


async def _submit(submissions: Submissions, avatar_id: uuid.UUID, owner_id: str = OWNER, **fields: Any) -> Generation:
    return (await submissions.submit(owner_id, _request(avatar_id, **fields))).view.generation


async def _outbox(sessions: async_sessionmaker[AsyncSession]) -> list[EventPayload]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_table).order_by(outbox_table.c.id))).mappings().all()
    return [parse_event(row["body"], row["content_type"], row["headers"])[1] for row in rows]


async def _count(sessions: async_sessionmaker[AsyncSession], table: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


@dataclass(frozen=True)
class Snapshot:
    """What a submit writes: generation rows, outbox rows, idempotency rows, and each owner's bucket."""

    generations: int
    outbox: int
    idempotency_keys: int
    buckets: dict[str, tuple[float, datetime]]


async def _snapshot(sessions: async_sessionmaker[AsyncSession]) -> Snapshot:
    async with sessions() as session:
        quotas = (await session.execute(select(OwnerQuota))).scalars().all()
        buckets = {quota.owner_id: (quota.tokens, quota.refilled_at) for quota in quotas}
    return Snapshot(
        await _count(sessions, Generation.__table__),
        await _count(sessions, outbox_table),
        await _count(sessions, IdempotencyKey.__table__),
        buckets,
    )


async def _refused(h: Harness, attempt: Callable[[], Any], error: type[DomainError], *, status: int) -> DomainError:
    """Run a submit that must be refused; check it wrote nothing (no row, event, key, token) and woke nobody."""
    before = await _snapshot(h.sessions)
    notified, commits = list(h.hub.notified), len(h.commits)
    with pytest.raises(error) as caught:
        await attempt()
    assert caught.value.status_code == status
    assert await _snapshot(h.sessions) == before
    assert (h.hub.notified, len(h.commits)) == (notified, commits)
    return caught.value


def _completed(generation_id: uuid.UUID, attempts: int = 1) -> GenerationCompleted:
    return GenerationCompleted(
        generation_id=str(generation_id),
        image=ImageRef(object_key=generation_image_key(generation_id), sha256=SHA, width=64, height=64, size_bytes=10),
        generation_time_seconds=0.5,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=0.6),
        timings=Timings(total_ms=500.0),
        attempts=attempts,
    )


def _started(generation_id: uuid.UUID, attempt: int = 1) -> GenerationStarted:
    return GenerationStarted(generation_id=str(generation_id), attempt=attempt, worker_mode="sync")


def _result(payload: EventPayload, event_id: str | None = None) -> tuple[EventEnvelope, EventPayload]:
    return new_event(payload, source=GATEWAY, subject="s", event_id=event_id), payload
