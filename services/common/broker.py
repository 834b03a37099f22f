"""RabbitMQ over aio-pika: connect, declare the topology, publish with confirms, consume with manual ack."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)

from contracts.envelope import EventEnvelope
from contracts.events import EventPayload
from contracts.topology import QueueSpec, Topology
from services.common.events import InvalidEventError, from_message, to_message, traceparent_of

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


async def declare_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Declare exchanges, queues, dead-letter queues and bindings; safe to repeat."""
    events = await channel.declare_exchange(topo.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(topo.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    for spec in topo.queues:
        dlq = await channel.declare_queue(spec.dlq_name, durable=True, arguments={"x-queue-type": "quorum"})
        await dlq.bind(dlx, routing_key=spec.dead_letter_routing_key)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=queue_arguments(spec, topo))
        for key in spec.routing_keys:
            await queue.bind(events, routing_key=key)


async def declare_topology_on(connection: AbstractRobustConnection, topo: Topology) -> None:
    """Declare the topology on a short-lived channel of `connection` (what a service does at start)."""
    channel = await connection.channel()
    try:
        await declare_topology(channel, topo)
    finally:
        await channel.close()


async def delete_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Delete every queue and exchange of a topology (test teardown)."""
    for spec in topo.queues:
        for name in (spec.name, spec.dlq_name):
            await channel.queue_delete(name)
    for exchange in (topo.events_exchange, topo.dead_letter_exchange):
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


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the message is dead-lettered at once."""


@dataclass(frozen=True)
class ReceivedEvent:
    """An event handed to a handler, with what the delivery says about it."""

    envelope: EventEnvelope
    payload: EventPayload
    traceparent: str | None
    redelivered: bool
    # Quorum queues count earlier deliveries in x-delivery-count (absent on the first).
    delivery_count: int


EventHandler = Callable[[ReceivedEvent], Awaitable[None]]


class Consumer:
    """Consumes a queue with manual ack: ack after the handler returns, requeue on failure, DLQ on garbage.

    A handler exception other than InvalidEventError/PermanentError is treated as retryable: the message
    is requeued, and the queue's delivery limit bounds the retries before it is dead-lettered.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        handler: EventHandler,
        *,
        prefetch: int = 10,
        requeue_delay: float = 0.2,
    ) -> None:
        self._connection = connection
        self._queue_name = queue_name
        self._handler = handler
        self._prefetch = prefetch
        # A short pause before a requeue keeps a failing handler from spinning through its retries.
        self._requeue_delay = requeue_delay
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    @property
    def running(self) -> bool:
        """Whether the consumer is subscribed on an open channel (what a health check reports)."""
        return self._tag is not None and self._channel is not None and not self._channel.is_closed

    async def start(self) -> None:
        """Open a channel, set the prefetch, and start consuming the (already declared) queue."""
        self._channel = await self._connection.channel()
        # Quorum queues do not support global QoS: per-consumer prefetch only.
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.get_queue(self._queue_name, ensure=True)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking messages, let the handlers in flight finish, close the channel."""
        if self._queue is not None and self._tag is not None and self._channel and not self._channel.is_closed:
            await self._queue.cancel(self._tag)
        self._tag = None
        if self._in_flight:
            # Unfinished handlers leave their messages unacked: the broker redelivers them.
            await asyncio.wait(self._in_flight, timeout=drain_timeout)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope, payload = from_message(message)
        except InvalidEventError as error:
            log.warning("dead-lettering invalid message %s from %s: %s", message.message_id, self._queue_name, error)
            await message.reject(requeue=False)
            return
        received = ReceivedEvent(
            envelope=envelope,
            payload=payload,
            traceparent=traceparent_of(message),
            redelivered=bool(message.redelivered),
            delivery_count=_delivery_count(message),
        )
        try:
            await self._handler(received)
        except (InvalidEventError, PermanentError) as error:
            log.warning("dead-lettering %s %s: %s", envelope.type, envelope.id, error)
            await message.reject(requeue=False)
        except Exception:
            log.exception("handler failed for %s %s; requeueing", envelope.type, envelope.id)
            if self._requeue_delay > 0:
                await asyncio.sleep(self._requeue_delay)
            await message.nack(requeue=True)
        else:
            await message.ack()


def _delivery_count(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get("x-delivery-count", 0)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
