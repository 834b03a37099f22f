"""Reading events off RabbitMQ queues in tests (basic.get polling, acked on read), and removing a run's topology."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from contracts.envelope import EventEnvelope
from contracts.events import EventPayload
from contracts.topology import DEFAULT_RETRY_DELAYS, Topology, topology
from services.common.messaging.broker import connect, declare_topology_on, delete_topology
from services.common.messaging.events import from_message

Received = tuple[EventEnvelope, EventPayload]


@asynccontextmanager
async def bound_queue(
    connection: AbstractRobustConnection, exchange: str, routing_key: str
) -> AsyncIterator[AbstractQueue]:
    """A test's own queue bound to `routing_key` (`#`: everything) on an exchange, removed with its channel."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(await channel.get_exchange(exchange), routing_key=routing_key)
        yield queue
    finally:
        await channel.close()


async def drain_events(
    connection: AbstractRobustConnection, queue_name: str, *, expect: int, wait: float = 10.0, grace: float = 0.3
) -> list[Received]:
    """Wait for `expect` events on the queue, then take whatever else arrives within `grace` seconds."""
    channel = await connection.channel()
    try:
        queue = await channel.get_queue(queue_name)
        received: list[Received] = []
        async with asyncio.timeout(wait):
            while len(received) < expect:
                message = await queue.get(fail=False, no_ack=True)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                received.append(from_message(message))
        await asyncio.sleep(grace)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            received.append(from_message(message))
        return received
    finally:
        await channel.close()


async def delete_run_topology(url: str, prefix: str, retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS) -> None:
    """Remove a run's exchanges and queues, its retry stages named by `retry_delays` (quorum queues left behind
    weigh on the broker for good)."""
    connection = await connect(url, name="vixenbliss-test-cleanup")
    try:
        await delete_topology(await connection.channel(), topology(prefix, retry_delays=retry_delays))
    finally:
        await connection.close()


@asynccontextmanager
async def declared_topology(amqp: AbstractRobustConnection, names: Topology) -> AsyncIterator[Topology]:
    """`names` declared on the broker for the block, and deleted after it (a fixture's topology of its own)."""
    await declare_topology_on(amqp, names)
    try:
        yield names
    finally:
        cleanup = await amqp.channel()
        await delete_topology(cleanup, names)
        await cleanup.close()
