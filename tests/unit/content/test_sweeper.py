"""The deadline sweeper fails open generations past deadline + grace with TIMEOUT, and nothing else."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import GenerationFailed
from services.common.events import new_event
from services.content.models import Base
from services.content.schemas import GenerateRequest
from services.content.service import ContentPolicy, ContentService
from services.content.sweeper import sweep_forever
from tests.support.identity_events import ready_avatar_events
from tests.support.sqlite import sqlite_sessions

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = 600


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class NoImages:
    def public_url(self, key: str) -> str | None:
        return None

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        return "unused"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "content.db", Base.metadata) as factory:
        yield factory


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(sessions: async_sessionmaker[AsyncSession], clock: Clock) -> ContentService:
    return ContentService(sessions, NoImages(), ContentPolicy(DEADLINE, 3600), clock=clock)


async def _generation(service: ContentService) -> uuid.UUID:
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    for payload, time in ready_avatar_events(avatar_id, lora_id, time=T0, step=timedelta(seconds=1)):
        await service.apply_identity_event(
            new_event(payload, source="/vixenbliss/identity", subject="s", time=time), payload
        )
    generation = await service.request_generation(GenerateRequest(avatar_id=uuid.UUID(avatar_id), prompt="p"))
    return generation.id


async def test_only_generations_past_deadline_and_grace_fail_with_timeout(
    service: ContentService, clock: Clock
) -> None:
    stuck = await _generation(service)
    clock.now = T0 + timedelta(seconds=DEADLINE + 30)
    assert await service.fail_overdue(grace_seconds=60) == 0  # inside the grace period
    fresh = await _generation(service)  # its deadline is later

    clock.now = T0 + timedelta(seconds=DEADLINE + 61)
    assert await service.fail_overdue(grace_seconds=60) == 1
    view = await service.get_generation(stuck)
    assert view.generation.status == "failed"
    assert view.generation.error is not None and view.generation.error["error_code"] == "TIMEOUT"
    assert (await service.get_generation(fresh)).generation.status == "queued"
    assert await service.fail_overdue(grace_seconds=60) == 0  # already terminal: swept once


async def test_a_result_arriving_after_the_sweep_does_not_reopen_the_generation(
    service: ContentService, clock: Clock
) -> None:
    generation_id = await _generation(service)
    clock.now = T0 + timedelta(seconds=DEADLINE + 120)
    await service.fail_overdue(grace_seconds=60)
    late = GenerationFailed(
        generation_id=str(generation_id), error_code="LORA_LOAD_FAILED", error="x", retryable=False, attempts=1
    )
    await service.apply_generation_result(new_event(late, source="/vixenbliss/inference-gateway", subject="s"), late)
    error = (await service.get_generation(generation_id)).generation.error
    assert error is not None and error["error_code"] == "TIMEOUT"


async def test_the_sweep_loop_runs_until_stopped(service: ContentService, clock: Clock) -> None:
    generation_id = await _generation(service)
    clock.now = T0 + timedelta(seconds=DEADLINE + 120)
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(service, interval_seconds=0.01, grace_seconds=60, stop=stop))
    async with asyncio.timeout(5):
        while (await service.get_generation(generation_id)).generation.status != "failed":  # noqa: ASYNC110  # polls a database row
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
