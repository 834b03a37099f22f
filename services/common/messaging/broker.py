"""RabbitMQ over aio-pika: connect, declare the topology, publish with confirms (consuming: consumer.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractRobustConnection,
)

from contracts.envelope import EventEnvelope
from contracts.topology import QueueSpec, RetryStage, Topology
from services.common.messaging.events import to_message

log = logging.getLogger(__name__)

DEFAULT_PUBLISH_TIMEOUT = 10.0
# The deploy-time step that declares what a service with RABBITMQ_DECLARE=check only looks for.
DECLARE_COMMAND = "python -m services.common.messaging.broker_declare"


class TopologyMissingError(RuntimeError):
    """The broker lacks exchanges or queues a service needs and may not declare itself (RABBITMQ_DECLARE=check)."""


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


@dataclass(frozen=True)
class Declarations:
    """Every exchange, queue (with its arguments) and binding of a topology, or of one service's part of it: what
    `declare_topology` declares, `delete_topology` removes and the broker definitions hold (one list for all)."""

    exchanges: tuple[tuple[str, aio_pika.ExchangeType], ...]
    queues: tuple[tuple[str, dict[str, Any]], ...]
    # (exchange, queue, routing key)
    bindings: tuple[tuple[str, str, str], ...]


def declarations(topo: Topology, *, service: str | None = None) -> Declarations:
    """The topology's declarations; with `service`, the exchanges and that service's queues only."""
    queues: list[tuple[str, dict[str, Any]]] = []
    bindings: list[tuple[str, str, str]] = []
    for spec in topo.queues if service is None else topo.queues_of(service):
        queues.append((spec.dlq_name, {"x-queue-type": "quorum"}))
        # The broker dead-letters into it through the DLX; the consumer sends its copies through the retry exchange.
        bindings.append((topo.dead_letter_exchange, spec.dlq_name, spec.dead_letter_routing_key))
        bindings.append((topo.retry_exchange, spec.dlq_name, spec.dead_letter_routing_key))
        queues.append((spec.name, queue_arguments(spec, topo)))
        bindings += [(topo.events_exchange, spec.name, key) for key in spec.routing_keys]
        for stage in spec.unique_retry_stages:
            queues.append((stage.name, retry_queue_arguments(spec, stage)))
            # The consumer sends a failed message here, under the stage's own name.
            bindings.append((topo.retry_exchange, stage.name, stage.name))
    exchanges = (
        (topo.events_exchange, aio_pika.ExchangeType.TOPIC),
        (topo.dead_letter_exchange, aio_pika.ExchangeType.DIRECT),
        (topo.retry_exchange, aio_pika.ExchangeType.TOPIC),
    )
    return Declarations(exchanges, tuple(queues), tuple(bindings))


async def declare_topology(channel: AbstractChannel, topo: Topology, *, service: str | None = None) -> None:
    """Declare exchanges, queues, retry queues, dead-letter queues and bindings; safe to repeat (it needs configure,
    write and read on every name: a service's own broker user has none of them, see `check_topology_on`). With
    `service`, only the exchanges and that service's queues."""
    plan = declarations(topo, service=service)
    exchanges = {name: await channel.declare_exchange(name, kind, durable=True) for name, kind in plan.exchanges}
    queues = {name: await channel.declare_queue(name, durable=True, arguments=args) for name, args in plan.queues}
    for exchange, queue, key in plan.bindings:
        await queues[queue].bind(exchanges[exchange], routing_key=key)


async def declare_topology_on(
    connection: AbstractRobustConnection, topo: Topology, *, service: str | None = None
) -> None:
    """Declare the topology (or a service's part of it) on a short-lived channel of `connection`."""
    channel = await connection.channel()
    try:
        await declare_topology(channel, topo, service=service)
    finally:
        await channel.close()


async def missing_declarations(
    connection: AbstractConnection, topo: Topology, *, service: str | None = None
) -> list[str]:
    """The exchanges and queues of the topology (or of `service`'s part) that the broker lacks, as `exchange NAME`
    / `queue NAME`. Checked with passive declares, which create nothing and need no permission."""
    plan = declarations(topo, service=service)
    wanted = [("exchange", name) for name, _ in plan.exchanges] + [("queue", name) for name, _ in plan.queues]
    missing: list[str] = []
    channel = await connection.channel()
    try:
        for kind, name in wanted:
            try:
                if kind == "exchange":
                    await channel.get_exchange(name, ensure=True)
                else:
                    await channel.get_queue(name, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                missing.append(f"{kind} {name}")
                # The broker closed the channel with the NOT_FOUND. Closed here too, or a robust channel would
                # reopen itself and stay open; then on with a fresh one.
                await channel.close()
                channel = await connection.channel()
    finally:
        if not channel.is_closed:
            await channel.close()
    return missing


async def check_topology_on(connection: AbstractRobustConnection, topo: Topology, *, service: str) -> None:
    """Raise TopologyMissingError (one line: what is missing, what to run) unless the broker holds the exchanges
    and `service`'s queues. Bindings cannot be checked over AMQP: the deploy step declares them with the rest."""
    missing = await missing_declarations(connection, topo, service=service)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise TopologyMissingError(
            f"the broker lacks what {service} needs ({shown}); with RABBITMQ_DECLARE=check a service declares "
            f"nothing: run `{DECLARE_COMMAND}` with an operator's credential first (docs/deploy.md)"
        )


async def delete_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Delete every queue and exchange of a topology (test teardown)."""
    plan = declarations(topo)
    for name, _ in plan.queues:
        await channel.queue_delete(name)
    for name, _ in plan.exchanges:
        await channel.exchange_delete(name)


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
