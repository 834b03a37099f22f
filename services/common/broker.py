"""RabbitMQ over aio-pika: connect, declare the topology, publish with confirms (consuming: consumer.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)

from contracts.envelope import EventEnvelope
from contracts.topology import QueueSpec, RetryStage, Topology
from services.common.events import to_message

log = logging.getLogger(__name__)

DEFAULT_PUBLISH_TIMEOUT = 10.0


async def connect(url: str, *, name: str | None = None, connect_timeout: float = 10.0) -> AbstractRobustConnection:
    """A robust connection (reconnects and restores channels, queues and consumers)."""
    properties: dict[str, Any] = {"connection_name": name} if name else {}
    return await aio_pika.connect_robust(url, timeout=connect_timeout, client_properties=properties)


def queue_arguments(spec: QueueSpec, topo: Topology) -> dict[str, Any]:
    """Arguments of a consumer queue: quorum, explicit delivery limit, at-least-once dead-lettering."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": spec.delivery_limit,
        "x-dead-letter-exchange": topo.dead_letter_exchange,
        "x-dead-letter-routing-key": spec.dead_letter_routing_key,
        # at-least-once dead-lettering requires reject-publish overflow (RabbitMQ docs).
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def retry_queue_arguments(spec: QueueSpec, stage: RetryStage) -> dict[str, Any]:
    """A retry stage: nobody consumes it; each message expires after the stage's delay (per-queue TTL, so the
    head always expires first) and is dead-lettered, at least once, straight back to its consumer queue."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": stage.ttl_ms,
        "x-dead-letter-exchange": "",  # the default exchange: routing key = queue name
        "x-dead-letter-routing-key": spec.name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def dlq_arguments() -> dict[str, Any]:
    """Arguments of a dead-letter queue."""
    return {"x-queue-type": "quorum"}


def unique_stages(spec: QueueSpec) -> tuple[RetryStage, ...]:
    """The queue's retry stages, one per retry queue (two equal delays share one)."""
    return tuple({stage.name: stage for stage in spec.retry_stages}.values())


async def declare_topology(channel: AbstractChannel, topo: Topology, *, service: str | None = None) -> None:
    """Declare exchanges, queues, retry queues, dead-letter queues and bindings; safe to repeat. With `service`,
    only the exchanges and that service's queues (a broker user of its own may configure nothing else; the rest
    comes from the broker's definitions, `python -m services.common.broker_definitions`)."""
    events = await channel.declare_exchange(topo.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(topo.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    retries = await channel.declare_exchange(topo.retry_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    for spec in topo.queues if service is None else topo.queues_of(service):
        dlq = await channel.declare_queue(spec.dlq_name, durable=True, arguments=dlq_arguments())
        # The broker dead-letters into it through the DLX; the consumer sends its copies through the retry exchange.
        await dlq.bind(dlx, routing_key=spec.dead_letter_routing_key)
        await dlq.bind(retries, routing_key=spec.dead_letter_routing_key)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=queue_arguments(spec, topo))
        for key in spec.routing_keys:
            await queue.bind(events, routing_key=key)
        for stage in unique_stages(spec):
            retry = await channel.declare_queue(stage.name, durable=True, arguments=retry_queue_arguments(spec, stage))
            # The consumer sends a failed message here, under the stage's own name.
            await retry.bind(retries, routing_key=stage.name)


async def declare_topology_on(
    connection: AbstractRobustConnection, topo: Topology, *, service: str | None = None
) -> None:
    """Declare the topology (or a service's part of it) on a short-lived channel of `connection`."""
    channel = await connection.channel()
    try:
        await declare_topology(channel, topo, service=service)
    finally:
        await channel.close()


async def delete_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Delete every queue and exchange of a topology (test teardown)."""
    for spec in topo.queues:
        for name in (spec.name, spec.dlq_name, *spec.retry_queue_names):
            await channel.queue_delete(name)
    for exchange in (topo.events_exchange, topo.dead_letter_exchange, topo.retry_exchange):
        await channel.exchange_delete(exchange)


class Publisher:
    """Publishes on a confirm channel: returns only once the broker confirmed; unroutable raises."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        self._channel = channel
        self._exchange = exchange
        self._timeout = publish_timeout

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        exchange_name: str,
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
    ) -> Publisher:
        """Open a confirm channel that raises on returned (unroutable) messages, on an existing exchange."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(exchange_name, ensure=True)
        return cls(channel, exchange, publish_timeout=publish_timeout)

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        """Publish and wait for the confirm.

        Raises aio_pika.exceptions.PublishError when no queue is bound for the routing key,
        DeliveryError when the broker nacks, TimeoutError past the timeout.
        """
        # publish(timeout=) does not cover waiting for a reconnect (aio-pika #556): bound it all.
        async with asyncio.timeout(self._timeout):
            await self._exchange.publish(message, routing_key, mandatory=True)

    async def publish_event(self, envelope: EventEnvelope, *, traceparent: str | None = None) -> None:
        """Publish an event under its type as routing key, confirmed."""
        await self.publish_confirmed(to_message(envelope, traceparent=traceparent), envelope.type)

    async def close(self) -> None:
        """Close the publisher's channel."""
        if not self._channel.is_closed:
            await self._channel.close()
