"""Generation use cases on SQLite: submit and its admission, idempotent retries, read, list, cancel, results, late
images, and the change notices that wake waiters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import (
    AvatarCreated,
    AvatarDeleted,
    EventPayload,
    GenerationCanceled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationStarted,
    ImageRef,
    LoraReady,
)
from contracts.worker import ModelInfo, Timings
from services.common.changes import ChangeFeed, ChangeHub
from services.common.events import new_event, parse_event
from services.common.http_errors import (
    ConflictError,
    DomainError,
    InvalidRequestError,
    NotFoundError,
    TooManyRequestsError,
)
from services.content.admission import AdmissionLimits
from services.content.decisions import UnexpectedEventError
from services.content.generations import GenerationPolicy, GenerationService, Submitted
from services.content.models import (
    Base,
    Generation,
    GenerationStatus,
    IdempotencyKey,
    OwnerQuota,
    inbox_table,
    outbox_table,
)
from services.content.projection import IdentityProjection
from services.content.schemas import GenerateRequest
from services.content.sweeper import sweep_once
from tests.support.identity_events import ready_avatar_events
from tests.support.sqlite import sqlite_sessions

SHA = "cd" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = 600
URL_TTL = 3600
OWNER, OTHER = "o1", "o2"
GATEWAY = "/vixenbliss/inference-gateway"
LIMITS = AdmissionLimits(
    min_side=64,
    max_side=2048,
    max_steps=100,
    max_pixel_steps=1024 * 1024 * 50,
    max_in_flight=100,
    rate_per_minute=60.0,
    burst=100,
    idempotency_ttl_seconds=3600,
)


class Clock:
    """The service's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


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


@dataclass
class Harness:
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    images: StandInImageStore
    hub: RecordingHub
    feed: ChangeFeed
    projection: IdentityProjection
    commits: list[None]

    def service(self, limits: AdmissionLimits = LIMITS, feed: ChangeFeed | None = None) -> GenerationService:
        return GenerationService(
            self.sessions,
            self.images,
            GenerationPolicy(DEADLINE, URL_TTL),
            limits,
            feed or self.feed,
            on_commit=lambda: self.commits.append(None),
            clock=self.clock,
            seed_source=lambda: 1234,
        )


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "content.db", Base.metadata) as factory:
        yield factory


@pytest.fixture
def h(sessions: async_sessionmaker[AsyncSession]) -> Harness:
    clock = Clock()
    hub = RecordingHub()
    return Harness(
        sessions=sessions,
        clock=clock,
        images=StandInImageStore(),
        hub=hub,
        feed=ChangeFeed(hub, "content_test_changes"),
        projection=IdentityProjection(sessions, clock=clock),
        commits=[],
    )


@pytest.fixture
def service(h: Harness) -> GenerationService:
    return h.service()


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


async def _submit(service: GenerationService, avatar_id: uuid.UUID, owner_id: str = OWNER, **fields: Any) -> Generation:
    return (await service.submit(owner_id, _request(avatar_id, **fields))).view.generation


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
        image=ImageRef(object_key=f"outputs/{generation_id}.png", sha256=SHA, width=64, height=64, size_bytes=10),
        generation_time_seconds=0.5,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=0.6),
        timings=Timings(total_ms=500.0),
        attempts=attempts,
    )


def _started(generation_id: uuid.UUID, attempt: int = 1) -> GenerationStarted:
    return GenerationStarted(generation_id=str(generation_id), attempt=attempt, worker_mode="sync")


def _result(payload: EventPayload, event_id: str | None = None) -> tuple[EventEnvelope, EventPayload]:
    return new_event(payload, source=GATEWAY, subject="s", event_id=event_id), payload


# --- submit -----------------------------------------------------------------------------------------------------


async def test_submit_records_a_queued_row_and_exactly_one_generation_requested(h: Harness) -> None:
    service = h.service()
    avatar_id, lora_id = await _ready_avatar(h, scale=0.6)

    submitted = await service.submit(OWNER, _request(avatar_id, width=64, height=64, steps=2))

    generation = submitted.view.generation
    assert submitted.replayed is False and submitted.view.image_url is None
    assert (generation.status, generation.seed, generation.owner_id) == ("queued", 1234, OWNER)
    assert (generation.created_at, generation.deadline) == (T0, T0 + timedelta(seconds=DEADLINE))
    assert (generation.started_at, generation.finished_at) == (None, None)
    events = await _outbox(h.sessions)
    assert len(events) == 1
    requested = events[0]
    assert isinstance(requested, GenerationRequested)
    assert requested.generation_id == str(generation.id) and requested.owner_id == OWNER
    assert requested.lora is not None and (requested.lora.lora_model_id, requested.lora.scale) == (lora_id, 0.6)
    assert requested.lora.object_key == f"loras/{avatar_id}/{lora_id}.safetensors"
    assert requested.params.seed == 1234 and requested.params.width == 64
    assert requested.deadline - requested.requested_at == timedelta(seconds=DEADLINE)
    assert len(h.commits) == 1  # the relay was woken
    stored = (await service.get(OWNER, generation.id)).generation
    assert (stored.status, stored.params["steps"], stored.lora) == ("queued", 2, requested.lora.model_dump())


async def test_a_seed_in_the_request_is_kept(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)

    generation = await _submit(service, avatar_id, seed=0)

    assert (generation.seed, generation.params["seed"]) == (0, 0)


async def test_submit_for_an_unknown_avatar_is_a_404_naming_avatar_id(h: Harness, service: GenerationService) -> None:
    error = await _refused(h, lambda: _submit(service, uuid.uuid4()), NotFoundError, status=404)

    assert [f.field for f in error.fields] == ["avatar_id"]


async def test_submit_for_someone_elses_avatar_is_the_same_404(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h, owner_id=OTHER)

    error = await _refused(h, lambda: _submit(service, avatar_id, owner_id=OWNER), NotFoundError, status=404)

    assert [f.field for f in error.fields] == ["avatar_id"]
    assert await _submit(service, avatar_id, owner_id=OTHER)  # its owner may


async def test_submit_for_a_deleted_avatar_is_a_404(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    deleted = AvatarDeleted(avatar_id=str(avatar_id), owner_id=OWNER, name="Vixen")
    await h.projection.apply(*_pair(deleted, T0 + timedelta(seconds=2)))

    await _refused(h, lambda: _submit(service, avatar_id), NotFoundError, status=404)


async def test_submit_for_an_avatar_without_a_ready_lora_is_a_409(h: Harness, service: GenerationService) -> None:
    avatar_id = uuid.uuid4()
    await h.projection.apply(*_pair(AvatarCreated(avatar_id=str(avatar_id), owner_id=OWNER, name="V")))

    error = await _refused(h, lambda: _submit(service, avatar_id), ConflictError, status=409)

    assert [f.field for f in error.fields] == ["avatar_id"]


async def test_a_request_over_the_budget_is_a_422_before_anything_is_written(h: Harness) -> None:
    service = h.service(replace(LIMITS, max_pixel_steps=512 * 512 * 10))
    avatar_id, _ = await _ready_avatar(h)

    error = await _refused(
        h, lambda: _submit(service, avatar_id, width=512, height=512, steps=11), InvalidRequestError, status=422
    )

    assert [f.field for f in error.fields] == ["width", "height", "steps"]


async def test_the_burst_is_admitted_and_then_a_429_until_the_bucket_refills(h: Harness) -> None:
    service = h.service(replace(LIMITS, burst=2, rate_per_minute=6.0))
    avatar_id, _ = await _ready_avatar(h)
    await _submit(service, avatar_id)
    await _submit(service, avatar_id)

    error = await _refused(h, lambda: _submit(service, avatar_id), TooManyRequestsError, status=429)

    assert error.reason_code == "SUBMIT_RATE_LIMITED"
    assert error.headers == {"Retry-After": "10"}  # one token every 10 s
    h.clock.advance(9)
    await _refused(h, lambda: _submit(service, avatar_id), TooManyRequestsError, status=429)
    h.clock.advance(1)
    await _submit(service, avatar_id)
    assert await _count(h.sessions, Generation.__table__) == 3


async def test_each_owner_has_a_bucket_of_their_own(h: Harness) -> None:
    service = h.service(replace(LIMITS, burst=1, rate_per_minute=1.0))
    mine, _ = await _ready_avatar(h, owner_id=OWNER)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)
    await _submit(service, mine, owner_id=OWNER)

    await _refused(h, lambda: _submit(service, mine, owner_id=OWNER), TooManyRequestsError, status=429)
    await _submit(service, theirs, owner_id=OTHER)


async def test_the_in_flight_cap_is_a_429_until_one_finishes(h: Harness) -> None:
    service = h.service(replace(LIMITS, max_in_flight=2))
    avatar_id, _ = await _ready_avatar(h)
    first = await _submit(service, avatar_id)
    second = await _submit(service, avatar_id)
    await service.apply_result(*_result(_started(second.id)))  # running counts as in flight too

    error = await _refused(h, lambda: _submit(service, avatar_id), TooManyRequestsError, status=429)

    assert error.reason_code == "TOO_MANY_IN_FLIGHT"
    assert "Retry-After" in error.headers
    await service.apply_result(*_result(_completed(first.id)))
    await _submit(service, avatar_id)


@pytest.mark.parametrize(
    ("refusal", "status"),
    [("unknown avatar", 404), ("foreign avatar", 404), ("no lora", 409), ("over budget", 422), ("in flight", 429)],
)
async def test_a_refused_submit_takes_no_token(h: Harness, refusal: str, status: int) -> None:
    # Two tokens that never refill: one for the generation that fills the owner's only slot, one left. If the
    # refusal took it, the good submit afterwards would be rate limited.
    limits = replace(LIMITS, burst=2, rate_per_minute=0.001, max_in_flight=1, max_pixel_steps=64 * 64 * 100)
    service = h.service(limits)
    avatar_id, _ = await _ready_avatar(h)
    foreign, _ = await _ready_avatar(h, owner_id=OTHER)
    bare = uuid.uuid4()
    await h.projection.apply(*_pair(AvatarCreated(avatar_id=str(bare), owner_id=OWNER, name="V")))
    small: dict[str, Any] = {"width": 64, "height": 64, "steps": 10}
    attempts: dict[str, Callable[[], Any]] = {
        "unknown avatar": lambda: _submit(service, uuid.uuid4(), **small),
        "foreign avatar": lambda: _submit(service, foreign, **small),
        "no lora": lambda: _submit(service, bare, **small),
        "over budget": lambda: _submit(service, avatar_id, width=128, height=128, steps=30),
        "in flight": lambda: _submit(service, avatar_id, **small),
    }
    occupying = await _submit(service, avatar_id, **small)
    if refusal != "in flight":
        await service.cancel(OWNER, occupying.id)

    await _refused(h, attempts[refusal], DomainError, status=status)

    if refusal == "in flight":
        await service.cancel(OWNER, occupying.id)
    last = await _submit(service, avatar_id, **small)  # the token the refusal left
    await service.cancel(OWNER, last.id)
    error = await _refused(h, lambda: _submit(service, avatar_id, **small), TooManyRequestsError, status=429)
    assert error.reason_code == "SUBMIT_RATE_LIMITED"  # there really was only one left


# --- Idempotency-Key --------------------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_and_body_answers_the_same_generation(h: Harness) -> None:
    service = h.service(replace(LIMITS, burst=1, rate_per_minute=0.001))
    avatar_id, _ = await _ready_avatar(h)
    first = await service.submit(OWNER, _request(avatar_id, seed=7), "key-1")
    h.clock.advance(30)

    # Key order and spelled-out defaults make no difference; the empty bucket does not matter to a replay.
    again = GenerateRequest.model_validate(
        {"seed": 7, "steps": 28, "prompt": "a portrait", "avatar_id": str(avatar_id), "negative_prompt": ""}
    )
    retry = await service.submit(OWNER, again, "key-1")

    assert (first.replayed, retry.replayed) == (False, True)
    assert retry.view.generation.id == first.view.generation.id
    assert retry.view.generation.created_at == T0
    assert len(await _outbox(h.sessions)) == 1
    assert await _count(h.sessions, Generation.__table__) == 1
    assert await _count(h.sessions, IdempotencyKey.__table__) == 1
    assert len(h.commits) == 1  # the replay committed nothing for the relay


async def test_a_replay_answers_the_generation_as_it_stands_now(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    first = await service.submit(OWNER, _request(avatar_id), "key-1")
    await service.apply_result(*_result(_completed(first.view.generation.id)))

    retry = await service.submit(OWNER, _request(avatar_id), "key-1")

    assert retry.replayed and retry.view.generation.status == "completed"
    assert retry.view.image_url is not None


async def test_the_same_key_with_another_body_is_a_422_naming_the_header(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    await service.submit(OWNER, _request(avatar_id, seed=7), "key-1")

    error = await _refused(
        h, lambda: service.submit(OWNER, _request(avatar_id, seed=8), "key-1"), InvalidRequestError, status=422
    )

    assert [f.field for f in error.fields] == ["Idempotency-Key"]


async def test_keys_are_per_owner(h: Harness, service: GenerationService) -> None:
    mine, _ = await _ready_avatar(h, owner_id=OWNER)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)

    a = await service.submit(OWNER, _request(mine), "shared-key")
    b = await service.submit(OTHER, _request(theirs), "shared-key")

    assert not b.replayed and a.view.generation.id != b.view.generation.id
    assert await _count(h.sessions, IdempotencyKey.__table__) == 2


async def test_a_key_past_its_lifetime_starts_afresh(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    first = await service.submit(OWNER, _request(avatar_id, seed=1), "key-1")
    h.clock.advance(LIMITS.idempotency_ttl_seconds + 1)

    later = await service.submit(OWNER, _request(avatar_id, seed=2), "key-1")  # another body is fine now

    assert not later.replayed and later.view.generation.id != first.view.generation.id
    assert await _count(h.sessions, IdempotencyKey.__table__) == 1
    replay = await service.submit(OWNER, _request(avatar_id, seed=2), "key-1")
    assert replay.replayed and replay.view.generation.id == later.view.generation.id


async def test_old_keys_are_forgotten(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    await service.submit(OWNER, _request(avatar_id), "old")
    h.clock.advance(LIMITS.idempotency_ttl_seconds - 10)
    await service.submit(OWNER, _request(avatar_id), "young")
    h.clock.advance(11)

    assert await service.forget_idempotency_keys() == 1

    async with h.sessions() as session:
        assert [row.key for row in (await session.execute(select(IdempotencyKey))).scalars()] == ["young"]


# --- read -------------------------------------------------------------------------------------------------------


async def test_someone_elses_or_an_unknown_generation_is_a_404(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    for owner_id, generation_id in ((OTHER, generation.id), (OWNER, uuid.uuid4())):
        with pytest.raises(NotFoundError):
            await service.get(owner_id, generation_id)
    assert (await service.get(OWNER, generation.id)).generation.id == generation.id


async def test_get_unchecked_reads_any_generation_but_not_a_missing_one(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h, owner_id=OTHER)
    generation = await _submit(service, avatar_id, owner_id=OTHER)

    assert (await service.get_unchecked(generation.id)).generation.owner_id == OTHER
    with pytest.raises(NotFoundError):
        await service.get_unchecked(uuid.uuid4())


async def test_a_completed_generation_gets_a_presigned_url_made_at_read_time(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    assert (await service.get(OWNER, generation.id)).image_url is None

    await service.apply_result(*_result(_completed(generation.id)))
    view = await service.get(OWNER, generation.id)

    key = f"outputs/{generation.id}.png"
    assert view.generation.status == "completed"
    assert view.image_url is not None and key in view.image_url
    assert h.images.signed == [(key, URL_TTL)]
    await service.get(OWNER, generation.id)
    assert h.images.signed == [(key, URL_TTL)] * 2  # a fresh one each time, never stored


async def test_a_public_bucket_url_is_used_instead_of_signing(h: Harness) -> None:
    h.images.public = "https://cdn.example"
    service = h.service()
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.apply_result(*_result(_completed(generation.id)))

    view = await service.get(OWNER, generation.id)

    assert view.image_url == f"https://cdn.example/outputs/{generation.id}.png"
    assert h.images.signed == []


# --- list -------------------------------------------------------------------------------------------------------


async def _pages(service: GenerationService, owner_id: str, limit: int, **filters: Any) -> list[list[uuid.UUID]]:
    pages: list[list[uuid.UUID]] = []
    cursor: str | None = None
    while True:
        page = await service.list(
            owner_id,
            limit=limit,
            cursor=cursor,
            avatar_id=filters.get("avatar_id"),
            status=filters.get("status"),
        )
        pages.append([view.generation.id for view in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
        assert len(pages) < 20, "the cursor does not advance"


async def test_the_list_pages_through_the_owners_generations_newest_first(
    h: Harness, service: GenerationService
) -> None:
    mine, _ = await _ready_avatar(h, owner_id=OWNER)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)
    created = []
    for _ in range(5):
        h.clock.advance(1)
        created.append((await _submit(service, mine)).id)
        await _submit(service, theirs, owner_id=OTHER)

    pages = await _pages(service, OWNER, limit=2)

    assert pages == [created[4:2:-1], created[2:0:-1], created[:1]]


async def test_the_list_ends_without_a_cursor_when_the_last_page_is_full(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(4):
        h.clock.advance(1)
        await _submit(service, avatar_id)

    pages = await _pages(service, OWNER, limit=2)

    assert [len(page) for page in pages] == [2, 2]


async def test_generations_created_at_the_same_instant_are_each_listed_once(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    created = {(await _submit(service, avatar_id)).id for _ in range(5)}  # the clock stands still

    pages = await _pages(service, OWNER, limit=2)

    listed = [generation_id for page in pages for generation_id in page]
    assert sorted(listed) == sorted(created)
    assert listed == sorted(listed, reverse=True)  # ties broken by id, newest (largest) first


async def test_the_list_filters_by_avatar_and_by_status(h: Harness, service: GenerationService) -> None:
    first, _ = await _ready_avatar(h)
    second, _ = await _ready_avatar(h)
    a1 = await _submit(service, first)
    h.clock.advance(1)
    a2 = await _submit(service, first)
    h.clock.advance(1)
    b1 = await _submit(service, second)
    await service.apply_result(*_result(_completed(a1.id)))
    await service.cancel(OWNER, b1.id)

    assert await _pages(service, OWNER, limit=10, avatar_id=first) == [[a2.id, a1.id]]
    assert await _pages(service, OWNER, limit=10, avatar_id=second) == [[b1.id]]
    assert await _pages(service, OWNER, limit=10, status=GenerationStatus.QUEUED) == [[a2.id]]
    assert await _pages(service, OWNER, limit=10, status=GenerationStatus.CANCELED) == [[b1.id]]
    assert await _pages(service, OWNER, limit=10, avatar_id=second, status=GenerationStatus.QUEUED) == [[]]
    assert await _pages(service, OTHER, limit=10) == [[]]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "e30", "W10", "eyJ0IjoiMjAyNi0wMS0wMSIsImlkIjoiMSJ9", "!!!", ""])
async def test_a_cursor_this_api_did_not_return_is_a_422_naming_cursor(service: GenerationService, cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await service.list(OWNER, limit=10, cursor=cursor, avatar_id=None, status=None)

    assert [f.field for f in caught.value.fields] == ["cursor"]


async def test_a_tampered_cursor_is_a_422(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(3):
        h.clock.advance(1)
        await _submit(service, avatar_id)
    page = await service.list(OWNER, limit=1, cursor=None, avatar_id=None, status=None)
    assert page.next_cursor is not None

    tampered = page.next_cursor[: len(page.next_cursor) // 2]
    with pytest.raises(InvalidRequestError) as caught:
        await service.list(OWNER, limit=1, cursor=tampered, avatar_id=None, status=None)

    assert [f.field for f in caught.value.fields] == ["cursor"]


# --- cancel -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("running", [False, True], ids=["queued", "running"])
async def test_cancel_ends_an_open_generation_and_emits_one_generation_canceled(h: Harness, running: bool) -> None:
    service = h.service()
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    if running:
        await service.apply_result(*_result(_started(generation.id)))
    commits = len(h.commits)
    canceled_at = h.clock.advance(5)

    view = await service.cancel(OWNER, generation.id)

    assert (view.generation.status, view.generation.finished_at) == ("canceled", canceled_at)
    assert (await service.get(OWNER, generation.id)).generation.status == "canceled"
    events = await _outbox(h.sessions)
    assert [type(event) for event in events] == [GenerationRequested, GenerationCanceled]
    canceled = events[1]
    assert isinstance(canceled, GenerationCanceled)
    assert (canceled.generation_id, canceled.owner_id, canceled.avatar_id) == (
        str(generation.id),
        OWNER,
        str(avatar_id),
    )
    assert canceled.canceled_at == canceled_at
    assert len(h.commits) == commits + 1


@pytest.mark.parametrize("end", ["completed", "failed", "canceled"])
async def test_a_finished_generation_cannot_be_canceled(h: Harness, service: GenerationService, end: str) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    if end == "completed":
        await service.apply_result(*_result(_completed(generation.id)))
    elif end == "failed":
        failed = GenerationFailed(generation_id=str(generation.id), error_code="CUDA_OOM", error="oom", retryable=True)
        await service.apply_result(*_result(failed))
    else:
        await service.cancel(OWNER, generation.id)
    outbox = await _count(h.sessions, outbox_table)

    with pytest.raises(ConflictError):
        await service.cancel(OWNER, generation.id)

    assert (await service.get(OWNER, generation.id)).generation.status == end
    assert await _count(h.sessions, outbox_table) == outbox


async def test_cancel_of_someone_elses_generation_is_a_404_and_changes_nothing(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    for owner_id, generation_id in ((OTHER, generation.id), (OWNER, uuid.uuid4())):
        with pytest.raises(NotFoundError):
            await service.cancel(owner_id, generation_id)

    assert (await service.get(OWNER, generation.id)).generation.status == "queued"
    assert await _count(h.sessions, outbox_table) == 1


# --- results ----------------------------------------------------------------------------------------------------


async def test_results_move_the_generation_forward_and_record_when(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    started_at = h.clock.advance(2)
    await service.apply_result(*_result(_started(generation.id)))
    running = (await service.get(OWNER, generation.id)).generation
    finished_at = h.clock.advance(3)
    await service.apply_result(*_result(_completed(generation.id, attempts=2)))
    done = (await service.get(OWNER, generation.id)).generation

    assert (running.status, running.started_at, running.finished_at) == ("running", started_at, None)
    assert (done.status, done.started_at, done.finished_at) == ("completed", started_at, finished_at)
    assert (done.attempts, done.generation_time_seconds) == (2, 0.5)
    assert done.timings is not None and done.timings["total_ms"] == 500.0
    assert done.image is not None and done.image["object_key"] == f"outputs/{generation.id}.png"


async def test_a_failed_result_records_the_error(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    failed = GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="not a LoRA", retryable=False
    )

    await service.apply_result(*_result(failed))

    stored = (await service.get(OWNER, generation.id)).generation
    assert stored.status == "failed" and stored.error is not None
    assert (stored.error["error_code"], stored.error["retryable"]) == ("LORA_LOAD_FAILED", False)
    assert stored.finished_at == T0


async def test_the_same_result_event_twice_is_applied_once(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    envelope, payload = _result(_completed(generation.id))
    await service.apply_result(envelope, payload)
    before = (await service.get(OWNER, generation.id)).generation
    inbox = await _count(h.sessions, inbox_table)
    h.clock.advance(60)

    with h.hub.watch(str(generation.id)) as watch:
        await service.apply_result(envelope, payload)
        assert not await watch.changed(0)

    after = (await service.get(OWNER, generation.id)).generation
    assert (after.status, after.updated_at, after.finished_at) == ("completed", before.updated_at, before.finished_at)
    assert await _count(h.sessions, inbox_table) == inbox


async def test_a_redelivered_started_is_applied_once(h: Harness, service: GenerationService) -> None:
    # A second started of the same attempt would still touch the row (updated_at) and wake waiters: only the
    # inbox stops it.
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    envelope, payload = _result(_started(generation.id))
    await service.apply_result(envelope, payload)
    before = (await service.get(OWNER, generation.id)).generation
    h.clock.advance(60)

    with h.hub.watch(str(generation.id)) as watch:
        await service.apply_result(envelope, payload)
        assert not await watch.changed(0)

    after = (await service.get(OWNER, generation.id)).generation
    assert (after.status, after.updated_at, after.started_at) == ("running", before.updated_at, before.started_at)


async def test_a_redelivered_late_completed_deletes_its_image_once(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.cancel(OWNER, generation.id)
    envelope, payload = _result(_completed(generation.id))

    await service.apply_result(envelope, payload)
    await service.apply_result(envelope, payload)

    assert h.images.deleted == [f"outputs/{generation.id}.png"]


async def test_a_late_started_after_completed_changes_nothing(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.apply_result(*_result(_completed(generation.id)))
    h.clock.advance(30)

    with h.hub.watch(str(generation.id)) as watch:
        await service.apply_result(*_result(_started(generation.id, attempt=3)))
        assert not await watch.changed(0)

    stored = (await service.get(OWNER, generation.id)).generation
    assert (stored.status, stored.started_at, stored.attempts, stored.updated_at) == ("completed", None, 1, T0)


async def test_a_completed_after_cancel_keeps_it_canceled_and_deletes_the_image(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.cancel(OWNER, generation.id)

    await service.apply_result(*_result(_completed(generation.id)))

    view = await service.get(OWNER, generation.id)
    assert view.generation.status == "canceled" and view.image_url is None
    assert h.images.deleted == [f"outputs/{generation.id}.png"]
    assert view.generation.image_purge_pending is False
    assert h.images.signed == []


async def test_an_image_that_cannot_be_deleted_now_is_deleted_by_the_sweeper(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.cancel(OWNER, generation.id)
    h.images.failing_deletes = 1

    await service.apply_result(*_result(_completed(generation.id)))  # applied all the same

    pending = (await service.get(OWNER, generation.id)).generation
    assert (pending.status, pending.image_purge_pending, h.images.deleted) == ("canceled", True, [])

    await sweep_once(service, grace_seconds=60)

    purged = (await service.get(OWNER, generation.id)).generation
    assert purged.image_purge_pending is False
    assert h.images.deleted == [f"outputs/{generation.id}.png"]
    assert await service.purge_late_images() == 0  # nothing left to delete


async def test_a_completed_generations_image_is_never_purged(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.apply_result(*_result(_completed(generation.id)))

    assert await service.purge_late_images() == 0
    assert h.images.deleted == []


async def test_a_result_for_a_generation_content_never_issued_is_refused_and_not_marked(
    h: Harness, service: GenerationService
) -> None:
    for generation_id in (str(uuid.uuid4()), "not-a-uuid"):
        started = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
        with pytest.raises(UnexpectedEventError):
            await service.apply_result(*_result(started))
    assert await _count(h.sessions, inbox_table) == 0


async def test_an_event_that_is_not_a_result_is_refused(service: GenerationService) -> None:
    ready = LoraReady(
        lora_model_id="l", avatar_id="a", owner_id="o", object_key="k", sha256=SHA, size_bytes=1, base_model="b"
    )
    with pytest.raises(UnexpectedEventError):
        await service.apply_result(*_result(ready))


# --- deadlines --------------------------------------------------------------------------------------------------


async def test_only_generations_past_deadline_and_grace_fail_with_timeout(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    stuck = await _submit(service, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 30)
    assert await service.fail_overdue(grace_seconds=60) == 0  # inside the grace period
    fresh = await _submit(service, avatar_id)  # its deadline is later

    h.clock.now = T0 + timedelta(seconds=DEADLINE + 61)
    assert await service.fail_overdue(grace_seconds=60) == 1

    failed = (await service.get(OWNER, stuck.id)).generation
    assert failed.status == "failed" and failed.finished_at == h.clock.now
    assert failed.error is not None and failed.error["error_code"] == "TIMEOUT"
    assert (await service.get(OWNER, fresh.id)).generation.status == "queued"
    assert await service.fail_overdue(grace_seconds=60) == 0  # already terminal: swept once


async def test_a_result_arriving_after_the_timeout_does_not_reopen_the_generation(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 120)
    await service.fail_overdue(grace_seconds=60)

    late = GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="x", retryable=False, attempts=1
    )
    await service.apply_result(*_result(late))
    await service.apply_result(*_result(_completed(generation.id)))

    stored = (await service.get(OWNER, generation.id)).generation
    assert stored.status == "failed" and stored.image is None
    assert stored.error is not None and stored.error["error_code"] == "TIMEOUT"


async def test_the_fail_overdue_limit_bounds_one_pass(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(3):
        await _submit(service, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 1)

    assert await service.fail_overdue(grace_seconds=0, limit=2) == 2
    assert await service.fail_overdue(grace_seconds=0, limit=2) == 1


# --- change notices ---------------------------------------------------------------------------------------------


async def test_a_submit_announces_its_generation_once_it_committed(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)

    generation = await _submit(service, avatar_id)

    assert h.hub.notified == [str(generation.id)]


class AnnounceThenFail(ChangeFeed):
    """A feed whose transaction fails right after the announcement (as a failed commit would)."""

    async def announce(self, session: AsyncSession, key: str) -> None:
        await super().announce(session, key)
        raise RuntimeError("the transaction fails after the announcement")


async def test_a_rolled_back_submit_wakes_nobody_and_leaves_nothing(h: Harness) -> None:
    service = h.service(feed=AnnounceThenFail(h.hub, "content_test_changes"))
    avatar_id, _ = await _ready_avatar(h)
    before = await _snapshot(h.sessions)

    with pytest.raises(RuntimeError, match="after the announcement"):
        await _submit(service, avatar_id)

    assert h.hub.notified == []
    assert await _snapshot(h.sessions) == before
    assert h.commits == []


async def test_a_watch_wakes_on_each_result(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    with h.hub.watch(str(generation.id)) as watch, h.hub.watch(str(uuid.uuid4())) as other:
        assert not await watch.changed(0)
        await service.apply_result(*_result(_started(generation.id)))
        assert await watch.changed(0)
        await service.apply_result(*_result(_completed(generation.id)))
        assert await watch.changed(0)
        assert not await other.changed(0)


async def test_a_watch_wakes_on_cancel(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    with h.hub.watch(str(generation.id)) as watch:
        await service.cancel(OWNER, generation.id)
        assert await watch.changed(0)
        with pytest.raises(ConflictError):
            await service.cancel(OWNER, generation.id)
        assert not await watch.changed(0)


async def test_a_watch_wakes_on_timeout(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 1)

    with h.hub.watch(str(generation.id)) as watch:
        await service.fail_overdue(grace_seconds=0)
        assert await watch.changed(0)
        await service.fail_overdue(grace_seconds=0)
        assert not await watch.changed(0)


async def test_a_submitted_generation_reads_back_as_the_submit_answered(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)

    submitted: Submitted = await service.submit(OWNER, _request(avatar_id, prompt="cafe\u0301"))

    stored = (await service.get(OWNER, submitted.view.generation.id)).generation
    assert stored.params == submitted.view.generation.params
    assert stored.params["prompt"] == "caf\u00e9"
