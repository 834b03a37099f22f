"""Retention on a real database (PostgreSQL and SQLite): sent outbox rows and processed-event ids older than the
horizon go, unsent rows and recent ids stay, and under a steady flow the tables stop growing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.messaging.outbox import make_outbox_table
from services.common.persistence.db import create_all, create_session_factory, make_metadata
from services.common.persistence.retention import BATCH, Bookkeeping, prune_bookkeeping
from services.content.inbox import make_inbox_table

HORIZON = timedelta(hours=1)
START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Tables:
    sessions: async_sessionmaker[AsyncSession]
    outbox: Table
    inbox: Table


@pytest.fixture
async def tables(empty_engine: AsyncEngine) -> AsyncIterator[Tables]:
    metadata = make_metadata()
    outbox, inbox = make_outbox_table(metadata, "ret_outbox"), make_inbox_table(metadata, "ret_inbox")
    await create_all(empty_engine, metadata)
    yield Tables(create_session_factory(empty_engine), outbox, inbox)


async def add_rows(tables: Tables, at: datetime, count: int, *, sent: bool = True, tag: str = "") -> None:
    """`count` outbox rows staged at `at` (sent then too, or not) and as many processed-event ids."""
    ids = [f"{tag}{at.timestamp():.0f}-{n}" for n in range(count)]
    outbox_rows = [
        {
            "event_id": event_id,
            "routing_key": "generation.started",
            "content_type": "application/cloudevents+json",
            "body": b"{}",
            "headers": {},
            "created_at": at,
            "sent_at": at if sent else None,
            "attempts": 1,
        }
        for event_id in ids
    ]
    inbox_rows = [{"consumer": "content.results", "event_id": event_id, "processed_at": at} for event_id in ids]
    async with tables.sessions() as session, session.begin():
        await session.execute(insert(tables.outbox), outbox_rows)
        await session.execute(insert(tables.inbox), inbox_rows)


async def counts(tables: Tables) -> tuple[int, int]:
    async with tables.sessions() as session:
        outbox = (await session.execute(select(func.count()).select_from(tables.outbox))).scalar_one()
        inbox = (await session.execute(select(func.count()).select_from(tables.inbox))).scalar_one()
    return int(outbox), int(inbox)


async def test_rows_past_the_horizon_go_and_unsent_or_recent_ones_stay(tables: Tables) -> None:
    await add_rows(tables, START - timedelta(hours=2), 3, tag="old-")
    await add_rows(tables, START - timedelta(hours=2), 2, sent=False, tag="unsent-")
    await add_rows(tables, START - timedelta(minutes=10), 4, tag="recent-")

    removed = await prune_bookkeeping(
        tables.sessions, Bookkeeping(tables.outbox, tables.inbox), HORIZON, now=lambda: START
    )

    # 3 sent outbox rows and the 5 old processed ids (processed is processed, sent or not).
    assert removed == 3 + 5
    assert await counts(tables) == (2 + 4, 4)


async def test_under_a_steady_flow_the_tables_stop_growing(tables: Tables) -> None:
    sizes = []
    for minute in range(0, 240, 20):  # four hours, a pruning every 20 minutes, 10 events each time
        now = START + timedelta(minutes=minute)
        await add_rows(tables, now, 10)
        await prune_bookkeeping(
            tables.sessions, Bookkeeping(tables.outbox, tables.inbox), HORIZON, now=lambda at=now: at
        )
        sizes.append(await counts(tables))

    # What is within the horizon (an hour: 3 earlier prunings' rows and this one's) and nothing more.
    assert max(sizes) == (40, 40) and sizes[-1] == (40, 40)
    assert sizes[:3] == [(10, 10), (20, 20), (30, 30)]


async def test_a_backlog_larger_than_a_batch_goes_in_one_call(tables: Tables) -> None:
    await add_rows(tables, START - timedelta(days=2), BATCH + 5)

    removed = await prune_bookkeeping(
        tables.sessions, Bookkeeping(tables.outbox, tables.inbox), HORIZON, now=lambda: START
    )

    assert removed == 2 * (BATCH + 5) and await counts(tables) == (0, 0)
