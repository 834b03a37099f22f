"""The sweeper: each pass fails overdue generations (TIMEOUT), deletes late images of canceled ones and forgets old
Idempotency-Keys; it repeats full batches, survives a failing pass, and stops when asked."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import GenerationCompleted, ImageRef
from contracts.object_keys import generation_image_key
from contracts.worker import ModelInfo
from services.common.messaging.events import new_event
from services.content.cancel import OwnerCancel
from services.content.changes import ChangeFeed, ChangeHub
from services.content.models import Base, IdempotencyKey
from services.content.projection import IdentityProjection
from services.content.reads import GenerationReads
from services.content.results import ResultApplier
from services.content.schemas import GenerateRequest
from services.content.submit import Submissions
from services.content.sweeper import SWEEP_BATCH, SweeperChores, running_sweeper, sweep_forever, sweep_once
from tests.support.content.harness import Generations
from tests.support.content.units import LIMITS, T0, Clock
from tests.support.identity.events import ready_avatar_events
from tests.support.sqlite import sqlite_sessions

DEADLINE = 600
GUARD = 5.0


class StandInImageStore:
    """A stand-in for the object storage that fails the first `failing` deletes."""

    def __init__(self, failing: int = 0) -> None:
        self.failing = failing
        self.deleted: list[str] = []

    def public_url(self, key: str) -> str | None:
        return None

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        return f"https://s3.test/{key}"

    async def delete(self, key: str) -> None:
        if self.failing:
            self.failing -= 1
            raise ConnectionError("storage unreachable")
        self.deleted.append(key)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "content.db", Base.metadata) as factory:
        yield factory


def _wired(sessions: async_sessionmaker[AsyncSession], images: StandInImageStore, clock: Clock) -> Generations:
    changes = ChangeFeed(ChangeHub(), "c")
    reads = GenerationReads(sessions, images, 3600)
    chores = SweeperChores(
        sessions, images, changes, idempotency_ttl_seconds=LIMITS.idempotency_ttl_seconds, clock=clock
    )
    return Generations(
        submissions=Submissions(sessions, reads, LIMITS, changes, deadline_seconds=DEADLINE, clock=clock),
        reads=reads,
        owner_cancel=OwnerCancel(sessions, reads, changes, clock=clock),
        results=ResultApplier(sessions, changes, chores, clock=clock),
        chores=chores,
    )


async def _ready_avatar(sessions: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    projection = IdentityProjection(sessions, clock=lambda: T0)
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    for payload, time in ready_avatar_events(avatar_id, lora_id, time=T0, step=timedelta(seconds=1)):
        await projection.apply(new_event(payload, source="/vixenbliss/identity", subject="s", time=time), payload)
    return uuid.UUID(avatar_id)


async def test_one_sweep_does_every_chore(sessions: async_sessionmaker[AsyncSession]) -> None:
    clock, images = Clock(), StandInImageStore(failing=1)
    generations = _wired(sessions, images, clock)
    avatar_id = await _ready_avatar(sessions)
    request = GenerateRequest(avatar_id=avatar_id, prompt="p")
    stuck = (await generations.submissions.submit("o1", request, "old-key")).view.generation
    canceled = (await generations.submissions.submit("o1", request)).view.generation
    await generations.owner_cancel.cancel("o1", canceled.id)
    late = GenerationCompleted(
        generation_id=str(canceled.id),
        image=ImageRef(
            object_key=generation_image_key(canceled.id), sha256="ab" * 32, width=64, height=64, size_bytes=1
        ),
        generation_time_seconds=1.0,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=1.0),
    )
    await generations.results.apply(new_event(late, source="/vixenbliss/inference-gateway", subject="s"), late)
    assert images.deleted == []  # storage failed: left for the sweeper
    clock.now = T0 + timedelta(seconds=LIMITS.idempotency_ttl_seconds + 1)

    await sweep_once(generations.chores, grace_seconds=60)

    failed = (await generations.reads.get("o1", stuck.id)).generation
    assert failed.status == "failed" and failed.error is not None and failed.error["error_code"] == "TIMEOUT"
    assert images.deleted == [generation_image_key(canceled.id)]
    assert (await generations.reads.get("o1", canceled.id)).generation.image_purge_pending is False
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


async def test_a_result_arriving_after_the_sweep_does_not_reopen_the_generation(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    generations = _wired(sessions, StandInImageStore(), clock)
    generation = (
        await generations.submissions.submit("o1", GenerateRequest(avatar_id=await _ready_avatar(sessions), prompt="p"))
    ).view
    clock.now = T0 + timedelta(seconds=DEADLINE + 120)
    await sweep_once(generations.chores, grace_seconds=60)

    late = GenerationCompleted(
        generation_id=str(generation.generation.id),
        image=ImageRef(
            object_key=generation_image_key(generation.generation.id),
            sha256="ab" * 32,
            width=64,
            height=64,
            size_bytes=1,
        ),
        generation_time_seconds=1.0,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=1.0),
    )
    await generations.results.apply(new_event(late, source="/vixenbliss/inference-gateway", subject="s"), late)

    stored = (await generations.reads.get("o1", generation.generation.id)).generation
    assert stored.status == "failed" and stored.image is None


class ScriptedChores:
    """Stands in for SweeperChores: each chore answers from a script and counts its calls; a sweep whose
    number is in `failing` raises; `swept` is set once `until` sweeps have started."""

    def __init__(
        self,
        overdue: list[int] | None = None,
        purged: list[int] | None = None,
        until: int = 1,
        failing: frozenset[int] = frozenset(),
    ) -> None:
        self.overdue = list(overdue or [])
        self.purged = list(purged or [])
        self.calls: list[tuple[str, int]] = []
        self.sweeps = 0
        self.until = until
        self.failing = failing
        self.swept = asyncio.Event()

    async def fail_overdue(self, grace_seconds: float, limit: int = 100) -> int:
        self.sweeps += 1
        if self.sweeps >= self.until:
            self.swept.set()
        self.calls.append(("fail_overdue", limit))
        if self.sweeps in self.failing:
            raise ConnectionError("database unreachable")
        return self.overdue.pop(0) if self.overdue else 0

    async def purge_late_images(self, limit: int = 100) -> int:
        self.calls.append(("purge_late_images", limit))
        return self.purged.pop(0) if self.purged else 0

    async def forget_idempotency_keys(self) -> int:
        self.calls.append(("forget_idempotency_keys", 0))
        return 0


def _as_chores(fake: ScriptedChores) -> SweeperChores:
    return cast(SweeperChores, fake)


async def test_a_full_batch_is_followed_by_another_until_one_is_not_full() -> None:
    fake = ScriptedChores(overdue=[SWEEP_BATCH, SWEEP_BATCH, 3], purged=[SWEEP_BATCH, 0])

    await sweep_once(_as_chores(fake), grace_seconds=60)

    assert fake.calls == [
        ("fail_overdue", SWEEP_BATCH),
        ("fail_overdue", SWEEP_BATCH),
        ("fail_overdue", SWEEP_BATCH),
        ("purge_late_images", SWEEP_BATCH),
        ("purge_late_images", SWEEP_BATCH),
        ("forget_idempotency_keys", 0),
    ]


async def test_the_sweep_loop_runs_every_interval_until_stopped() -> None:
    fake = ScriptedChores(until=3)
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(_as_chores(fake), interval_seconds=0.01, grace_seconds=60, stop=stop))

    async with asyncio.timeout(GUARD):
        await fake.swept.wait()
        stop.set()
        await task

    assert fake.sweeps >= 3


async def test_a_stop_ends_the_wait_for_the_next_sweep_at_once() -> None:
    fake = ScriptedChores(until=1)
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(_as_chores(fake), interval_seconds=3600, grace_seconds=60, stop=stop))

    async with asyncio.timeout(GUARD):  # an hour's interval: only the stop can end it in time
        await fake.swept.wait()
        stop.set()
        await task

    assert fake.sweeps == 1


async def test_a_failing_sweep_is_logged_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    fake = ScriptedChores(until=2, failing=frozenset({1}))
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(_as_chores(fake), interval_seconds=0.01, grace_seconds=60, stop=stop))

    with caplog.at_level(logging.ERROR, logger="services.content.sweeper"):
        async with asyncio.timeout(GUARD):
            await fake.swept.wait()
            stop.set()
            await task

    assert fake.sweeps >= 2
    assert any(record.message == "sweep failed" for record in caplog.records)
    assert ("forget_idempotency_keys", 0) in fake.calls  # the second sweep went all the way


async def test_the_running_sweeper_sweeps_in_the_background_and_stops_with_the_block() -> None:
    fake = ScriptedChores(until=1)

    async with asyncio.timeout(GUARD):
        async with running_sweeper(_as_chores(fake), interval_seconds=3600, grace_seconds=60):
            await fake.swept.wait()
        sweeps = fake.sweeps

    assert sweeps == 1
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "content-sweeper"]
