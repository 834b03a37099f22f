"""Broker plumbing against the real RabbitMQ: topology, confirmed publishing, consumer ack and a first retry."""

from __future__ import annotations

import asyncio

import aio_pika
import aio_pika.exceptions
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationStarted
from contracts.topology import (
    CONTENT_GENERATION_RESULTS,
    GATEWAY_GENERATION_REQUESTED,
    Topology,
)
from services.common.messaging.broker import Publisher, declare_topology
from services.common.messaging.consumer import (
    DEATH_DETAIL_HEADER,
    DEATH_QUEUE_HEADER,
    DEATH_REASON_HEADER,
    RETRIES_HEADER,
    ROUTING_KEY_HEADER,
    Consumer,
    PermanentError,
    ReceivedEvent,
)
from services.common.messaging.events import from_message, new_event
from tests.integration.common.amqp_reading import all_empty, counts, next_message, ready_count
from tests.support.generation_events import small_request

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_declare_topology_twice_is_harmless(amqp: AbstractRobustConnection, topo: Topology) -> None:
    channel = await amqp.channel()
    await declare_topology(channel, topo)
    assert not channel.is_closed
    for spec in topo.queues:
        assert len(spec.retry_queue_names) == len(spec.retry_delays)
        for name in (spec.name, spec.dlq_name, *spec.retry_queue_names):
            assert await ready_count(amqp, name) == 0


async def test_published_event_reaches_its_queue_with_amqp_properties(
    amqp: AbstractRobustConnection, topo: Topology
) -> None:
    publisher = await Publisher.open(amqp, topo.events_exchange)
    requested = small_request()
    event = new_event(requested, source="/vixenbliss/content", subject="gen-1", correlation_id="gen-1")

    await publisher.publish_event(event, traceparent=TRACEPARENT)

    message = await next_message(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == event.id
    assert message.content_type == "application/cloudevents+json"
    assert message.headers["traceparent"] == TRACEPARENT
    envelope, payload = from_message(message)
    assert envelope == event
    assert payload == requested
    await publisher.close()


async def test_unroutable_publish_raises(amqp: AbstractRobustConnection, topo: Topology) -> None:
    publisher = await Publisher.open(amqp, topo.events_exchange)
    message = aio_pika.Message(b"{}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    with pytest.raises(aio_pika.exceptions.PublishError):
        await publisher.publish_confirmed(message, "nobody.listens.here")
    await publisher.close()


async def test_consumer_acks_only_after_the_handler_returns(amqp: AbstractRobustConnection, topo: Topology) -> None:
    queue_name = topo.queue(GATEWAY_GENERATION_REQUESTED).name
    started, release = asyncio.Event(), asyncio.Event()
    seen: list[ReceivedEvent] = []

    async def slow_handler(event: ReceivedEvent) -> None:
        seen.append(event)
        started.set()
        await release.wait()

    consumer = Consumer(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED), slow_handler, prefetch=1, requeue_delay=0)
    await consumer.start()
    publisher = await Publisher.open(amqp, topo.events_exchange)
    event = new_event(small_request(), source="/vixenbliss/content", subject="gen-1")
    await publisher.publish_event(event)
    await asyncio.wait_for(started.wait(), 10)

    # The handler is still running: stopping now must leave the message unacked, so it comes back.
    await consumer.stop(drain_timeout=0.1)
    redelivered = await next_message(amqp, queue_name)
    assert redelivered.message_id == event.id
    assert redelivered.redelivered
    release.set()
    await publisher.close()


async def test_handler_success_acks_and_a_transient_failure_is_retried(
    amqp: AbstractRobustConnection, fast_topo: Topology
) -> None:
    topo = fast_topo
    spec = topo.queue(CONTENT_GENERATION_RESULTS)
    attempts: list[ReceivedEvent] = []
    done = asyncio.Event()

    async def flaky_handler(event: ReceivedEvent) -> None:
        attempts.append(event)
        if len(attempts) == 1:
            raise ConnectionError("database went away")
        done.set()

    consumer = Consumer(amqp, spec, flaky_handler, requeue_delay=0)
    await consumer.start()
    publisher = await Publisher.open(amqp, topo.events_exchange)
    started = GenerationStarted(generation_id="gen-2", attempt=1, worker_mode="sync")
    await publisher.publish_event(new_event(started, source="/vixenbliss/inference-gateway", subject="gen-2"))
    await asyncio.wait_for(done.wait(), 10)
    await consumer.stop()

    assert [a.payload for a in attempts] == [started, started]
    # The second try came back through the first retry stage, which the header counts.
    assert [a.attempt for a in attempts] == [0, 1]
    assert await counts(amqp, spec) == all_empty(spec)
    await publisher.close()


@pytest.mark.parametrize("kind", ["garbage", "permanent"])
async def test_invalid_or_permanently_failing_message_is_dead_lettered_at_once(
    amqp: AbstractRobustConnection, topo: Topology, kind: str
) -> None:
    spec = topo.queue(GATEWAY_GENERATION_REQUESTED)
    calls = 0

    async def handler(event: ReceivedEvent) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("the LoRA is not a LoRA")

    consumer = Consumer(amqp, spec, handler, requeue_delay=0)
    await consumer.start()
    publisher = await Publisher.open(amqp, topo.events_exchange)
    if kind == "garbage":
        message = aio_pika.Message(b"not json", content_type="application/cloudevents+json", message_id="junk")
        await publisher.publish_confirmed(message, "generation.requested")
    else:
        event = new_event(small_request("gen-4"), source="/vixenbliss/content", subject="gen-4")
        await publisher.publish_event(event)

    dead = await next_message(amqp, spec.dlq_name)
    await consumer.stop()
    # Dead-lettered by the consumer at once, with its reason; no retry stage on the way.
    assert dead.headers[DEATH_REASON_HEADER] == ("invalid-event" if kind == "garbage" else "permanent-error")
    assert dead.headers[DEATH_QUEUE_HEADER] == spec.name
    assert dead.headers[ROUTING_KEY_HEADER] == "generation.requested"
    assert RETRIES_HEADER not in dead.headers
    if kind == "permanent":
        assert dead.headers[DEATH_DETAIL_HEADER] == "the LoRA is not a LoRA"
    assert calls == (0 if kind == "garbage" else 1)
    assert await counts(amqp, spec) == all_empty(spec)
    await publisher.close()
