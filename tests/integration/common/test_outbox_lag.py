"""The relay's lag (age of the oldest unsent row) on a real SQLite outbox: the row a failed publish left, none
after a short batch, and what still waits behind a full one."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import pytest

from contracts.events import GenerationStarted
from services.common.messaging.events import new_event
from services.common.messaging.outbox import OutboxRelay, add_to_outbox, make_outbox_table
from services.common.persistence.db import create_all, create_engine, create_session_factory, make_metadata
from tests.support.stack.relay_publisher import RecordingRelayPublisher


class BrokerDownStandIn(RecordingRelayPublisher):
    """Fault injector: every publish fails, as with the broker away."""

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        raise ConnectionError("broker away")


async def test_the_lag_follows_what_is_left_unsent(tmp_path: Path) -> None:
    metadata = make_metadata()
    outbox = make_outbox_table(metadata, "lag_outbox")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await create_all(engine, metadata)
    sessions = create_session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            for n in range(3):
                started = GenerationStarted(generation_id=f"gen-{n}", attempt=1, worker_mode="sync")
                await add_to_outbox(session, outbox, new_event(started, source="/x", subject=f"gen-{n}"))

        down = OutboxRelay(sessions, outbox, BrokerDownStandIn())
        with pytest.raises(ConnectionError):
            await down.run_once()
        assert down.lag_seconds() > 0

        full = OutboxRelay(sessions, outbox, RecordingRelayPublisher(), batch_size=2)
        assert await full.run_once() == 2
        assert full.lag_seconds() > 0  # one row still waits behind the full batch
        assert await full.run_once() == 1
        assert full.lag_seconds() == 0
    finally:
        await engine.dispose()
