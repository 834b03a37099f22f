"""The job table on PostgreSQL with several runners claiming at once: each job is claimed by exactly one (FOR UPDATE
SKIP LOCKED), and a job whose lease ended is taken over by one runner only."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.persistence.db import create_engine, create_session_factory
from services.common.persistence.migrations import migrate_to_head
from services.inference_gateway.jobs import JobStore
from services.inference_gateway.migrations import MIGRATIONS
from services.inference_gateway.models import Job
from tests.support.gateway.fakes import gid, requested

RUNNERS = 4
JOBS = 40


@pytest.fixture
async def sessions(pg_url: URL) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(pg_url, pool_size=RUNNERS + 2)
    try:
        await migrate_to_head(engine, MIGRATIONS)
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def claim_all(store: JobStore, per_claim: int) -> list[str]:
    """Claim until a claim comes back empty; the ids this runner got."""
    got: list[str] = []
    while batch := await store.claim(per_claim):
        got += [job.generation_id for job in batch]
    return got


async def test_runners_claiming_at_once_each_get_distinct_jobs_and_together_all(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    intake = JobStore(sessions, owner="intake", lease_seconds=30)
    for n in range(JOBS):
        await intake.accept(requested(f"gen-{n:03d}"), None)
    stores = [JobStore(sessions, owner=f"runner-{n}", lease_seconds=30) for n in range(RUNNERS)]

    claimed = await asyncio.gather(*(claim_all(store, 3) for store in stores))

    counts = Counter(gid for ids in claimed for gid in ids)
    assert sorted(counts) == [f"gen-{n:03d}" for n in range(JOBS)]
    assert set(counts.values()) == {1}
    assert sum(1 for ids in claimed if ids) > 1  # they did claim side by side


async def test_an_expired_lease_is_taken_over_by_one_runner_only(sessions: async_sessionmaker[AsyncSession]) -> None:
    dead = JobStore(sessions, owner="dead", lease_seconds=30)
    await dead.accept(requested(gid("gen-1")), None)
    await dead.claim(1)
    async with sessions() as session, session.begin():
        await session.execute(update(Job).values(lease_until=datetime(2000, 1, 1, tzinfo=UTC)))
    stores = [JobStore(sessions, owner=f"runner-{n}", lease_seconds=30) for n in range(RUNNERS)]

    claimed = await asyncio.gather(*(store.claim(1) for store in stores))

    winners = [jobs for jobs in claimed if jobs]
    assert len(winners) == 1 and winners[0][0].recovered and winners[0][0].recoveries == 1
    job = await dead.job(gid("gen-1"))
    assert job is not None and job.lease_owner != "dead"


async def test_the_open_jobs_every_replica_reports_are_the_queued_and_running_ones_of_all(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    intake = JobStore(sessions, owner="intake", lease_seconds=30)
    for n in range(5):
        await intake.accept(requested(gid(f"gen-{n}")), None)
    running = await JobStore(sessions, owner="runner-a", lease_seconds=30).claim(2)
    await intake.cancel(gid("gen-4"))  # a queued job canceled: final, not open
    other = JobStore(sessions, owner="runner-b", lease_seconds=30)

    assert len(running) == 2
    assert await intake.count_open() == await other.count_open() == 4
