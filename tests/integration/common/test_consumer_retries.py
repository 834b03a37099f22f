"""Consumers against the real RabbitMQ: a failing handler is retried with growing delays through the retry
stages, so an outage shorter than their sum loses nothing; past the last stage, and for anything that is not a
real event from its producer, the message goes to the DLQ with the reason, and the handler never sees the latter.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.v1.event import CloudEvent

from contracts.envelope import EventEnvelope
from contracts.events import GenerationStarted
from contracts.topology import (
    CONTENT_GENERATION_RESULTS,
    GATEWAY_GENERATION_REQUESTED,
    SERVICE_CONTENT,
    SERVICE_IDENTITY,
    SERVICE_INFERENCE_GATEWAY,
    Topology,
    event_source,
)
from services.common.messaging.broker import Publisher
from services.common.messaging.consumer import (
    DEATH_DETAIL_HEADER,
    DEATH_QUEUE_HEADER,
    DEATH_REASON_HEADER,
    LAST_ERROR_HEADER,
    RETRIES_HEADER,
    ROUTING_KEY_HEADER,
    Consumer,
    ReceivedEvent,
)
from services.common.messaging.events import encode_event, new_event
from tests.integration.common.amqp_reading import all_empty, counts, next_message
from tests.integration.common.conftest import FAST_RETRY_DELAYS
from tests.support.generation_events import small_request

DB_PASSWORD = "s3cr3t-db-pass"


@dataclass
class DatabaseOutage:
    """Stands in for content's database going away: every handling fails with a connection error until
    `seconds` have passed since the first one, then the database is back."""

    seconds: float
    began: float | None = None
    failures: int = 0

    def check(self) -> None:
        now = time.monotonic()
        if self.began is None:
            self.began = now
        if now - self.began < self.seconds:
            self.failures += 1
            raise ConnectionError(f"connect to postgresql://content:{DB_PASSWORD}@db:5432/content refused")


@dataclass
class RecordingHandler:
    """A handler behind a dependency: records each call (time, retry count), fails while the dependency does."""

    outage: DatabaseOutage
    calls: list[tuple[float, int]] = field(default_factory=list)
    handled: list[ReceivedEvent] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, event: ReceivedEvent) -> None:
        self.calls.append((time.monotonic(), event.attempt))
        self.outage.check()
        self.handled.append(event)
        self.done.set()


def _started(generation_id: str) -> EventEnvelope:
    payload = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
    return new_event(payload, source=event_source(SERVICE_INFERENCE_GATEWAY), subject=generation_id)


def _requested(source: str = event_source(SERVICE_CONTENT), generation_id: str = "gen-r") -> EventEnvelope:
    payload = small_request(generation_id)
    return new_event(payload, source=source, subject=generation_id, correlation_id=generation_id)


async def test_an_outage_shorter_than_the_retry_stages_loses_nothing_and_handles_once(
    amqp: AbstractRobustConnection, fast_topo: Topology
) -> None:
    # Tries come at 0, 0.2, 0.6 and 1.4 s: a 1.2 s outage is over before the last one. (The production stages,
    # 1, 5, 15, 60 and 120 s, outlast a 60 s outage the same way.) Requeueing at once, five times 0.2 s apart
    # (what consumers did before), gives up after about 1 s and dead-letters the event.
    spec = fast_topo.queue(CONTENT_GENERATION_RESULTS)
    handler = RecordingHandler(DatabaseOutage(seconds=1.2))
    consumer = Consumer(amqp, spec, handler, requeue_delay=0)
    await consumer.start()
    publisher = await Publisher.open(amqp, fast_topo.events_exchange)
    event = _started("gen-outage")
    await publisher.publish_event(event)

    handled = asyncio.create_task(handler.done.wait())
    died = asyncio.create_task(next_message(amqp, spec.dlq_name))
    finished, _ = await asyncio.wait({handled, died}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    for task in (handled, died):
        task.cancel()
    await asyncio.gather(handled, died, return_exceptions=True)
    await consumer.stop()
    await publisher.close()

    if died in finished:
        headers = died.result().headers
        reason = headers.get(DEATH_REASON_HEADER) or headers.get("x-first-death-reason")
        pytest.fail(
            f"dead-lettered ({reason!r}) during a {handler.outage.seconds} s outage, after {len(handler.calls)} tries"
        )
    assert handled in finished, "neither handled nor dead-lettered in 15 s"
    assert handler.outage.failures >= 2, "the outage must have outlasted at least two tries"
    assert [h.envelope.id for h in handler.handled] == [event.id]
    # Every try but the first came back from the next retry stage.
    assert [attempt for _, attempt in handler.calls] == list(range(len(handler.calls)))
    # Nothing left behind: not in the queue, not waiting in a retry stage, not dead.
    assert await counts(amqp, spec) == all_empty(spec)


async def test_retry_delays_grow_and_exhausted_retries_dead_letter_with_the_reason(
    amqp: AbstractRobustConnection, fast_topo: Topology
) -> None:
    spec = fast_topo.queue(CONTENT_GENERATION_RESULTS)
    handler = RecordingHandler(DatabaseOutage(seconds=3600))
    consumer = Consumer(amqp, spec, handler, requeue_delay=0)
    await consumer.start()
    publisher = await Publisher.open(amqp, fast_topo.events_exchange)
    event = _started("gen-never")
    await publisher.publish_event(event)

    dead = await next_message(amqp, spec.dlq_name)
    await consumer.stop()
    await publisher.close()

    # The first try and one per stage, each after that stage's delay: the gaps grow.
    assert [attempt for _, attempt in handler.calls] == [0, 1, 2, 3]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(handler.calls)]
    for gap, delay in zip(gaps, FAST_RETRY_DELAYS, strict=True):
        assert delay - 0.02 <= gap < delay + 0.5, (gaps, FAST_RETRY_DELAYS)
    assert gaps == sorted(gaps)
    assert handler.handled == []

    assert dead.message_id == event.id
    assert dead.headers[DEATH_REASON_HEADER] == "retries-exhausted"
    assert dead.headers[RETRIES_HEADER] == len(FAST_RETRY_DELAYS)
    assert dead.headers[DEATH_QUEUE_HEADER] == spec.name
    assert dead.headers[ROUTING_KEY_HEADER] == "generation.started"
    detail = str(dead.headers[DEATH_DETAIL_HEADER])
    assert "ConnectionError: connect to postgresql://content:" in detail
    # The error travels sanitised: a password in it never reaches a header.
    assert DB_PASSWORD not in detail and DB_PASSWORD not in str(dead.headers[LAST_ERROR_HEADER])
    assert json.loads(dead.body)["id"] == event.id  # the body is the event as published
    assert await counts(amqp, spec) == all_empty(spec)


def _forged(topo: Topology) -> tuple[aio_pika.Message, str]:
    # Everything right but the source: a generation.requested that identity (or anyone) made up.
    return encode_event(_requested(source=event_source(SERVICE_IDENTITY))).to_message(), "forged-source"


def _binary(topo: Topology) -> tuple[aio_pika.Message, str]:
    # The same event in the binding's binary mode (ce- headers, the data as the body).
    envelope = _requested()
    attributes = {k: v for k, v in envelope.model_dump(exclude={"data"}).items() if v is not None}
    ce_message = ce_rabbitmq.to_binary_event(CloudEvent(attributes, dict(envelope.data)))
    message = aio_pika.Message(
        ce_message.body,
        content_type=ce_message.content_type,
        headers={str(k): str(v) for k, v in ce_message.headers.items()},
        message_id=envelope.id,
    )
    return message, "not-structured-cloudevent"


def _oversized(topo: Topology) -> tuple[aio_pika.Message, str]:
    # A real request from content, padded past the limit with a field consumers would otherwise ignore.
    envelope = _requested()
    padded = envelope.model_copy(update={"data": {**envelope.data, "padding": "x" * (300 * 1024)}})
    return encode_event(padded).to_message(), "too-large"


@pytest.mark.parametrize("make", [_forged, _binary, _oversized], ids=["forged-source", "binary-mode", "oversized"])
async def test_what_is_not_a_real_request_is_dead_lettered_unread(
    amqp: AbstractRobustConnection, fast_topo: Topology, make: object
) -> None:
    spec = fast_topo.queue(GATEWAY_GENERATION_REQUESTED)
    called: list[ReceivedEvent] = []
    real_handled = asyncio.Event()

    async def gateway_handler(event: ReceivedEvent) -> None:
        called.append(event)
        real_handled.set()

    consumer = Consumer(amqp, spec, gateway_handler, requeue_delay=0)
    await consumer.start()
    publisher = await Publisher.open(amqp, fast_topo.events_exchange)
    assert callable(make)
    message, reason = make(fast_topo)
    await publisher.publish_confirmed(message, "generation.requested")
    # A real request after it, so the handler is seen working on the same queue.
    real = _requested(generation_id="gen-real")
    await publisher.publish_event(real)

    dead = await next_message(amqp, spec.dlq_name)
    await asyncio.wait_for(real_handled.wait(), 10)
    await consumer.stop()
    await publisher.close()

    assert [event.envelope.id for event in called] == [real.id]  # the bad one never reached the handler
    assert dead.message_id == message.message_id
    assert dead.headers[DEATH_REASON_HEADER] == reason
    assert dead.headers[DEATH_QUEUE_HEADER] == spec.name
    assert await counts(amqp, spec) == all_empty(spec)
