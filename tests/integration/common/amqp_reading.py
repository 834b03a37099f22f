"""Reading queues in the broker tests: messages as they arrive (consumers, not polling), and counts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from contracts.topology import QueueSpec


async def next_message(
    connection: AbstractRobustConnection, queue_name: str, wait: float = 15.0
) -> AbstractIncomingMessage:
    """The next message of a queue, acked, as soon as the broker delivers it (at most `wait` seconds)."""
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue(queue_name)
        async with asyncio.timeout(wait), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                return message
        raise AssertionError(f"{queue_name} closed before a message came")
    finally:
        await channel.close()


async def ready_count(connection: AbstractRobustConnection, queue_name: str) -> int:
    """Messages ready in a queue (what a passive declare reports)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def counts(connection: AbstractRobustConnection, spec: QueueSpec) -> dict[str, int]:
    """Ready messages of a consumer queue, each of its retry stages and its DLQ, by queue name."""
    names = (spec.name, *spec.retry_queue_names, spec.dlq_name)
    return {name: await ready_count(connection, name) for name in names}


def all_empty(spec: QueueSpec) -> dict[str, int]:
    """What `counts` reports when nothing is left anywhere."""
    return dict.fromkeys((spec.name, *spec.retry_queue_names, spec.dlq_name), 0)


async def peek_messages(
    connection: AbstractRobustConnection, queue_name: str, count: int, wait: float = 15.0
) -> list[AbstractIncomingMessage]:
    """The first `count` messages of a queue as soon as they are there, left in the queue (never acked)."""
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=count)
        queue = await channel.get_queue(queue_name)
        seen: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(wait), queue.iterator() as messages:
            async for message in messages:
                seen.append(message)
                if len(seen) == count:
                    return seen
        raise AssertionError(f"{queue_name} closed before {count} messages came")
    finally:
        # Closing the channel hands the unacked messages back to the queue.
        await channel.close()


@contextlib.asynccontextmanager
async def dead_letter_tap(
    connection: AbstractRobustConnection, spec: QueueSpec
) -> AsyncIterator[asyncio.Queue[AbstractIncomingMessage]]:
    """A copy of every message dead-lettered from `spec`'s queue, as it happens, without touching the DLQ: a
    private queue bound under the DLQ's routing key to the retry exchange (the consumer's copies) and to the
    dead-letter exchange (the broker's, past the delivery limit)."""
    channel = await connection.channel()
    try:
        tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        for name in (spec.retry_exchange, spec.dead_letter_exchange):
            await tap.bind(await channel.get_exchange(name), routing_key=spec.dead_letter_routing_key)
        arrivals: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await tap.consume(arrivals.put, no_ack=True)
        yield arrivals
    finally:
        await channel.close()
