"""The gateway's job table on a throwaway SQLite file: a store, a runner with fakes, and the staged events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.persistence.db import create_engine, create_session_factory
from services.common.persistence.migrations import migrate_to_head
from services.inference_gateway.jobs import JobEvents, JobStore
from services.inference_gateway.metrics import Metrics
from services.inference_gateway.migrations import MIGRATIONS
from services.inference_gateway.models import outbox_table
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, WorkerClient
from services.inference_gateway.retries import RetryLimits, RetryPolicy
from services.inference_gateway.runner import JobRunner
from services.inference_gateway.service import GenerationService
from tests.support.gateway.fakes import FakeStorage

W = TypeVar("W", bound=WorkerClient)


@asynccontextmanager
async def job_sessions(path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a new SQLite file migrated to the gateway's head revision."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate_to_head(engine, MIGRATIONS)
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def staged_events(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, dict[str, object]]]:
    """Every event staged in the gateway's outbox, oldest first: (CloudEvents type, data)."""
    async with sessions() as session:
        rows = (await session.execute(select(outbox_table.c.body).order_by(outbox_table.c.id))).scalars().all()
    events = [json.loads(body) for body in rows]
    return [(str(e["type"]), dict(e["data"])) for e in events]


@dataclass
class RunnerParts(Generic[W]):
    """A runner over a real job table, with a fake (or stand-in) worker and a fake bucket."""

    store: JobStore
    service: GenerationService
    runner: JobRunner
    worker: W
    storage: FakeStorage
    metrics: Metrics


def runner_parts(
    sessions: async_sessionmaker[AsyncSession],
    worker: W,
    *,
    owner: str = "runner-a",
    lease_seconds: float = 30.0,
    concurrency: int = 1,
    max_attempts: int = 3,
) -> RunnerParts[W]:
    """Store, service and runner as main.py assembles them, minus the broker and the HTTP worker."""
    store = JobStore(sessions, owner=owner, lease_seconds=lease_seconds)
    events = JobEvents(store)
    storage, metrics = FakeStorage(), Metrics()
    policy = RetryPolicy(max_attempts=max_attempts, backoff_base_seconds=0.01, backoff_max_seconds=0.02)
    service = GenerationService(
        GatewayPorts(worker, storage, events, calls=events),
        GenerationConfig(RetryLimits(policy), lora_url_ttl_seconds=300, worker_timeout_seconds=600.0),
        metrics,
    )
    runner = JobRunner(
        store, service, concurrency=concurrency, lease_seconds=lease_seconds, metrics=metrics, poll_seconds=0.05
    )
    return RunnerParts(store, service, runner, worker, storage, metrics)
