"""Outbox and inbox on the embedded SQLite default, with a fake publisher (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import GenerationStarted
from services.common.messaging.events import from_message, new_event
from services.common.messaging.outbox import OutboxRelay, add_to_outbox, make_outbox_table
from services.common.persistence.db import create_all, create_engine, create_session_factory, make_metadata
from services.content.inbox import make_inbox_table, mark_processed


class FakePublisher:
    """Records published messages; can be told to fail the next N publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[aio_pika.Message, str]] = []
        self.fail_next = 0
        self.any_published = asyncio.Event()

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker unreachable")
        self.published.append((message, routing_key))
        self.any_published.set()


Db = tuple[async_sessionmaker[AsyncSession], Table, Table]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    metadata = make_metadata()
    outbox, inbox = make_outbox_table(metadata), make_inbox_table(metadata)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    await create_all(engine, metadata)
    yield create_session_factory(engine), outbox, inbox
    await engine.dispose()


def _event(generation_id: str) -> EventEnvelope:
    payload = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
    return new_event(payload, source="/vixenbliss/inference-gateway", subject=generation_id)


async def test_only_committed_rows_are_published_in_order(db: Db) -> None:
    sessions, outbox, _ = db
    first, second, dropped = _event("g1"), _event("g2"), _event("g3")
    async with sessions() as session, session.begin():
        await add_to_outbox(session, outbox, first, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        await add_to_outbox(session, outbox, second)
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await add_to_outbox(session, outbox, dropped)
            raise RuntimeError("the use case failed after staging its event")

    publisher = FakePublisher()
    assert await OutboxRelay(sessions, outbox, publisher).run_once() == 2
    assert [rk for _, rk in publisher.published] == ["generation.started"] * 2
    messages = [m for m, _ in publisher.published]
    assert [from_message(m)[0].id for m in messages] == [first.id, second.id]
    assert str(messages[0].headers["traceparent"]).startswith("00-aaaa")
    assert messages[0].delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert messages[0].message_id == first.id


async def test_a_failed_publish_is_recorded_and_retried(db: Db) -> None:
    sessions, outbox, _ = db
    async with sessions() as session, session.begin():
        await add_to_outbox(session, outbox, _event("g1"))
        await add_to_outbox(session, outbox, _event("g2"))
    publisher = FakePublisher()
    publisher.fail_next = 1
    relay = OutboxRelay(sessions, outbox, publisher)

    with pytest.raises(ConnectionError):
        await relay.run_once()
    async with sessions() as session:
        rows = (await session.execute(select(outbox).order_by(outbox.c.id))).mappings().all()
    assert [r["sent_at"] for r in rows] == [None, None]
    assert rows[0]["attempts"] == 1 and "broker unreachable" in rows[0]["last_error"]

    assert await relay.run_once() == 2
    async with sessions() as session:
        rows = (await session.execute(select(outbox).order_by(outbox.c.id))).mappings().all()
    assert all(r["sent_at"] is not None and r["last_error"] is None for r in rows)


class ConfirmsTogetherPublisher:
    """Confirms nothing until `batch` publishes are in flight: a relay waiting for each confirm before the next
    publish never gets there."""

    def __init__(self, batch: int) -> None:
        self.started: list[str] = []
        self._batch = batch
        self._all_in_flight = asyncio.Event()

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        self.started.append(str(message.message_id))
        if len(self.started) >= self._batch:
            self._all_in_flight.set()
        await asyncio.wait_for(self._all_in_flight.wait(), 2)


async def test_a_batch_is_published_in_order_and_its_confirms_awaited_together(db: Db) -> None:
    sessions, outbox, _ = db
    events = [_event(f"g{i}") for i in range(5)]
    async with sessions() as session, session.begin():
        for event in events:
            await add_to_outbox(session, outbox, event)
    publisher = ConfirmsTogetherPublisher(len(events))

    assert await OutboxRelay(sessions, outbox, publisher).run_once() == len(events)
    assert publisher.started == [event.id for event in events]
    async with sessions() as session:
        rows = (await session.execute(select(outbox))).mappings().all()
    assert all(r["sent_at"] is not None and r["attempts"] == 1 for r in rows)


async def test_rows_after_a_failed_publish_stay_unsent_even_when_confirmed(db: Db) -> None:
    sessions, outbox, _ = db
    async with sessions() as session, session.begin():
        for name in ("g1", "g2", "g3"):
            await add_to_outbox(session, outbox, _event(name))

    class SecondFails(FakePublisher):
        async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
            if from_message(message)[0].subject == "g2":
                raise ConnectionError("nacked")
            await super().publish_confirmed(message, routing_key)

    with pytest.raises(ConnectionError):
        await OutboxRelay(sessions, outbox, SecondFails()).run_once()
    async with sessions() as session:
        rows = (await session.execute(select(outbox).order_by(outbox.c.id))).mappings().all()
    # g3 was confirmed, but marking it sent would let it overtake g2: it goes again, after g2, next pass.
    assert [r["sent_at"] is not None for r in rows] == [True, False, False]
    assert rows[1]["last_error"] == "ConnectionError: nacked" and rows[2]["attempts"] == 0


async def test_run_forever_backs_off_then_delivers_and_stops(db: Db) -> None:
    sessions, outbox, _ = db
    publisher = FakePublisher()
    publisher.fail_next = 2
    relay = OutboxRelay(sessions, outbox, publisher, poll_interval=0.01, max_backoff=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop))
    async with sessions() as session, session.begin():
        await add_to_outbox(session, outbox, _event("g1"))
    relay.notify()
    await asyncio.wait_for(publisher.any_published.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(publisher.published) == 1


async def test_mark_processed_on_sqlite(db: Db) -> None:
    sessions, _, inbox = db
    async with sessions() as session, session.begin():
        assert await mark_processed(session, inbox, "e1", "c") is True
        assert await mark_processed(session, inbox, "e1", "c") is False
    async with sessions() as session, session.begin():
        assert await mark_processed(session, inbox, "e1", "c") is False
        assert await mark_processed(session, inbox, "e2", "c") is True
