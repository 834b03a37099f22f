"""Outbox relay and inbox against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import Table, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import GenerationStarted
from contracts.topology import CONTENT_GENERATION_RESULTS, Topology
from services.common.messaging.broker import Publisher
from services.common.messaging.events import from_message, new_event
from services.common.messaging.outbox import OutboxRelay, add_to_outbox, make_outbox_table
from services.common.persistence.db import create_all, create_engine, create_session_factory, make_metadata
from services.content.inbox import make_inbox_table, mark_processed


@dataclass
class Db:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    outbox: Table
    inbox: Table


@pytest.fixture
async def db(pg_url: URL) -> AsyncIterator[Db]:
    metadata = make_metadata()
    outbox, inbox = make_outbox_table(metadata), make_inbox_table(metadata)
    engine = create_engine(pg_url)
    await create_all(engine, metadata)
    try:
        yield Db(engine, create_session_factory(engine), outbox, inbox)
    finally:
        await engine.dispose()


def _started(generation_id: str) -> EventEnvelope:
    payload = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
    return new_event(payload, source="/vixenbliss/inference-gateway", subject=generation_id)


async def _drain(amqp: AbstractRobustConnection, queue_name: str, expect: int, wait: float = 15.0) -> list[str]:
    """Event ids in a queue: wait for `expect`, then read what else arrives within a short grace period."""
    channel = await amqp.channel()
    queue = await channel.get_queue(queue_name)
    ids: list[str] = []
    async with asyncio.timeout(wait):
        while len(ids) < expect:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            envelope, _ = from_message(message)
            ids.append(envelope.id)
    await asyncio.sleep(0.3)
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        ids.append(message.message_id or "")
    await channel.close()
    return ids


async def test_relay_publishes_committed_rows_and_not_rolled_back_ones(
    db: Db, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    committed, rolled_back = _started("gen-committed"), _started("gen-rolled-back")
    async with db.sessions() as session, session.begin():
        await add_to_outbox(session, db.outbox, committed, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    async with db.sessions() as session, session.begin():
        await add_to_outbox(session, db.outbox, rolled_back)
        await session.rollback()

    publisher = await Publisher.open(amqp, topo.events_exchange)
    relay = OutboxRelay(db.sessions, db.outbox, publisher)
    assert await relay.run_once() == 1
    assert await relay.run_once() == 0

    assert await _drain(amqp, topo.queue(CONTENT_GENERATION_RESULTS).name, expect=1) == [committed.id]
    async with db.sessions() as session:
        row = (await session.execute(select(db.outbox))).mappings().one()
    assert row["event_id"] == committed.id
    assert row["sent_at"] is not None and row["attempts"] == 1
    await publisher.close()


class CountingPublisher:
    """Wraps a real publisher and counts what one relay published."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.count = 0

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        await self.inner.publish_confirmed(message, routing_key)
        self.count += 1


async def test_two_relays_at_once_publish_each_row_exactly_once(
    db: Db, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    events = [_started(f"gen-{i}") for i in range(120)]
    async with db.sessions() as session, session.begin():
        for event in events:
            await add_to_outbox(session, db.outbox, event)

    publishers = [CountingPublisher(await Publisher.open(amqp, topo.events_exchange)) for _ in range(2)]
    relays = [OutboxRelay(db.sessions, db.outbox, p, batch_size=7) for p in publishers]

    async def drain(relay: OutboxRelay) -> None:
        while await relay.run_once():
            pass

    await asyncio.gather(*(drain(r) for r in relays))

    received = await _drain(amqp, topo.queue(CONTENT_GENERATION_RESULTS).name, expect=len(events))
    assert sorted(received) == sorted(e.id for e in events)  # each exactly once
    assert all(p.count > 0 for p in publishers), "both relays should have taken part"
    assert sum(p.count for p in publishers) == len(events)
    async with db.sessions() as session:
        unsent = await session.scalar(select(func.count()).select_from(db.outbox).where(db.outbox.c.sent_at.is_(None)))
    assert unsent == 0
    for p in publishers:
        await p.inner.close()


async def test_relay_run_forever_publishes_on_notify_and_stops(
    db: Db, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    publisher = await Publisher.open(amqp, topo.events_exchange)
    relay = OutboxRelay(db.sessions, db.outbox, publisher, poll_interval=30)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop))
    await asyncio.sleep(0.1)
    event = _started("gen-live")
    async with db.sessions() as session, session.begin():
        await add_to_outbox(session, db.outbox, event)
    relay.notify()
    assert await _drain(amqp, topo.queue(CONTENT_GENERATION_RESULTS).name, expect=1, wait=5) == [event.id]
    stop.set()
    await asyncio.wait_for(task, 5)
    await publisher.close()


async def test_mark_processed_is_idempotent_and_keeps_the_transaction_usable(db: Db) -> None:
    async with db.sessions() as session, session.begin():
        assert await mark_processed(session, db.inbox, "evt-1", "content.generation-results") is True
        assert await mark_processed(session, db.inbox, "evt-1", "content.generation-results") is False
        # The conflict did not abort the transaction: later statements still run.
        assert (await session.execute(text("select 1"))).scalar_one() == 1
        # Another consumer group processes the same event independently.
        assert await mark_processed(session, db.inbox, "evt-1", "content.identity-events") is True
    async with db.sessions() as session, session.begin():
        assert await mark_processed(session, db.inbox, "evt-1", "content.generation-results") is False
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(db.inbox)) == 2
