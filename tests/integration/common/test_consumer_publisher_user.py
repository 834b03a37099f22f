"""The publishing broker user a consumer's source check sees, on the real RabbitMQ: the user_id property RabbitMQ
checked, kept across the retry stages (the consumer's copies are published under its own user), and never a header
the publisher set itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.envelope import EventEnvelope
from contracts.events import GenerationSubmit
from contracts.topology import CONTENT_GENERATION_SUBMITS, Topology, event_source, topology
from services.common.messaging.broker import Publisher
from services.common.messaging.consumer import PUBLISHER_HEADER, Consumer, ReceivedEvent
from services.common.messaging.events import new_event, to_message
from tests.integration.common.conftest import FAST_RETRY_DELAYS
from tests.support.queues import declared_topology


@pytest.fixture
async def submit_topo(amqp: AbstractRobustConnection, run_prefix: str) -> AsyncIterator[Topology]:
    """The topology with a requesting service (so content's queue of commands exists) and fast retry stages."""
    names = topology(prefix=run_prefix, retry_delays=FAST_RETRY_DELAYS, requesters=("scheduler",))
    async with declared_topology(amqp, names):
        yield names


async def test_the_checked_user_id_survives_a_retry_and_a_forged_header_is_never_believed(
    amqp: AbstractRobustConnection, submit_topo: Topology, rabbitmq_url: str
) -> None:
    seen: dict[str, list[str | None]] = {}
    failed: set[str] = set()
    handled: dict[str, asyncio.Event] = {}

    def record(envelope: EventEnvelope, user_id: str | None) -> str | None:
        seen.setdefault(envelope.id, []).append(user_id)
        return None

    async def fail_once(event: ReceivedEvent) -> None:
        if event.envelope.id not in failed:
            failed.add(event.envelope.id)
            raise ConnectionError("the database is away")  # retryable: the message goes to a retry stage
        handled[event.envelope.id].set()

    spec = submit_topo.queue(CONTENT_GENERATION_SUBMITS)
    consumer = Consumer(amqp, spec, fail_once, requeue_delay=0, source_check=record)
    await consumer.start()
    # The tests' broker user (RabbitMQ accepts a user_id only if it is the connection's own).
    user = aio_pika.connection.make_url(rabbitmq_url).user or "guest"
    publisher = await Publisher.open(amqp, submit_topo.events_exchange)
    try:
        sent: dict[str, str | None] = {}
        for user_id in (user, None):
            envelope = new_event(
                GenerationSubmit(owner_id="o1", request={}), source=event_source("scheduler"), subject=None
            )
            message = to_message(envelope)
            message.user_id = user_id
            # What a publisher without a user_id (or with its own) would add to pass for another service.
            message.headers[PUBLISHER_HEADER] = "vixenbliss-scheduler"
            handled[envelope.id] = asyncio.Event()
            sent[envelope.id] = user_id
            await publisher.publish_confirmed(message, "generation.submit")
        async with asyncio.timeout(10):
            await asyncio.gather(*(done.wait() for done in handled.values()))
    finally:
        await publisher.close()
        await consumer.stop()

    # First from the events exchange, then back from the retry stage: the same user, or none, each time.
    assert seen == {event_id: [user_id, user_id] for event_id, user_id in sent.items()}
