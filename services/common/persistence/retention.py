"""Retention of the bookkeeping tables: sent outbox rows and processed-event ids are deleted after a horizon.

Both only grow otherwise. Past the horizon, a sent row is of no use (it was confirmed by the broker), and a
processed-event id only guards against a redelivery that late: the broker's retry stages end within minutes, and
a dead letter replayed after the horizon is applied again, which the consumers' forward-only state changes make
harmless. Deletes go in batches, so a long backlog never holds a lock for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import Field
from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.app.periodic import pause
from services.common.app.settings import SecretCheckedSettings
from services.common.persistence.db import TRANSIENT_DB_ERRORS

log = logging.getLogger(__name__)

BATCH = 1000


class RetentionSettings(SecretCheckedSettings):
    """How long sent outbox rows and processed-event ids are kept, and how often they are pruned."""

    event_retention_hours: float = Field(default=168.0, gt=0, le=24 * 365, validation_alias="EVENT_RETENTION_HOURS")
    retention_interval_seconds: float = Field(
        default=600.0, ge=1, le=24 * 3600, validation_alias="RETENTION_INTERVAL_SECONDS"
    )


@dataclass(frozen=True)
class RetentionTask:
    """A service's own clean-up that runs in the same loop after the bookkeeping tables are pruned (identity: expiring
    LoRA registrations and their upload objects)."""

    name: str
    run: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Bookkeeping:
    """A service's outbox and inbox tables (either may be absent)."""

    outbox: Table | None = None
    inbox: Table | None = None


async def prune_sent_outbox(session: AsyncSession, table: Table, before: datetime, batch: int = BATCH) -> int:
    """Delete up to `batch` outbox rows sent before `before`; how many."""
    old = select(table.c.id).where(table.c.sent_at < before).limit(batch)
    ids = list((await session.execute(old)).scalars())
    if ids:
        await session.execute(delete(table).where(table.c.id.in_(ids)))
    return len(ids)


async def prune_processed(session: AsyncSession, table: Table, before: datetime, batch: int = BATCH) -> int:
    """Delete up to `batch` processed-event ids recorded before `before`; how many."""
    old = select(table.c.consumer, table.c.event_id).where(table.c.processed_at < before).limit(batch)
    keys = [tuple(row) for row in (await session.execute(old)).all()]
    if keys:
        await session.execute(delete(table).where(tuple_(table.c.consumer, table.c.event_id).in_(keys)))
    return len(keys)


async def prune_bookkeeping(
    sessions: async_sessionmaker[AsyncSession],
    tables: Bookkeeping,
    horizon: timedelta,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Prune both tables down to the horizon, a batch per transaction; how many rows went."""
    before = now() - horizon
    removed = 0
    for table, prune in ((tables.outbox, prune_sent_outbox), (tables.inbox, prune_processed)):
        if table is None:
            continue
        while True:
            async with sessions() as session, session.begin():
                count = await prune(session, table, before)
            removed += count
            if count < BATCH:
                break
    return removed


@contextlib.asynccontextmanager
async def running_retention(
    sessions: async_sessionmaker[AsyncSession],
    tables: Bookkeeping,
    settings: RetentionSettings,
    *,
    tasks: Sequence[RetentionTask] = (),
) -> AsyncIterator[None]:
    """Prune in the background every `retention_interval_seconds` while the service runs, then run `tasks`."""
    stop = asyncio.Event()
    horizon = timedelta(hours=settings.event_retention_hours)
    wait = settings.retention_interval_seconds

    async def loop() -> None:
        while not stop.is_set():
            try:
                removed = await prune_bookkeeping(sessions, tables, horizon)
                if removed:
                    log.info("retention: removed %d outbox/inbox rows older than %s", removed, horizon)
            except TRANSIENT_DB_ERRORS as error:
                log.warning("retention: pruning failed (%s); next try in %.0fs", type(error).__name__, wait)
            for extra in tasks:
                try:
                    await extra.run()
                except Exception as error:
                    # One failing round (a database restarting) must not end the loop: the task runs again next time.
                    log.warning("retention: %s failed (%s); next try in %.0fs", extra.name, type(error).__name__, wait)
            await pause(stop, wait)

    task = asyncio.create_task(loop(), name="retention")
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
