"""Dead-letter queues of the deployment's topology: count them, look at their messages, replay them.

    python -m services.tools.dlq list
    python -m services.tools.dlq show QUEUE [--limit N]
    python -m services.tools.dlq replay QUEUE (--id EVENT_ID | --all)

QUEUE is a consumer queue or its DLQ, by base name (`inference-gateway.generation-requested`) or full name.
Names come from VIXEN_TOPOLOGY_PREFIX (and VIXEN_SUBMIT_SERVICES: the command and reply queues), the broker
from RABBITMQ_URL, the retry stages from BROKER_RETRY_DELAYS_SECONDS (as the services read them).

`show` takes nothing away: it gets the messages unacknowledged and hands them back. `replay` sends each chosen
dead letter back to the consumer queue it died in (confirmed; its retry count reset, so it gets every retry
stage again), and only then acks it in the DLQ: a publish that fails leaves the dead letter where it was.
It replays into that one queue, not through the events exchange, so no other consumer group gets the event a
second time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from contracts.topology import QueueSpec, Topology
from services.common.app.runtime import broker_topology
from services.common.app.settings import BrokerSettings, TopologySettings, load_settings
from services.common.messaging.broker import DEFAULT_PUBLISH_TIMEOUT, connect
from services.common.messaging.consumer import (
    DEATH_DETAIL_HEADER,
    DEATH_QUEUE_HEADER,
    DEATH_REASON_HEADER,
    LAST_ERROR_HEADER,
    RETRIES_HEADER,
    ROUTING_KEY_HEADER,
    copy_message,
)

REPLAYS_HEADER = "x-vixen-replays"
# What a replayed copy drops: our retry and death bookkeeping, and the broker's dead-lettering history.
_DROPPED_ON_REPLAY = frozenset(
    {
        RETRIES_HEADER,
        LAST_ERROR_HEADER,
        DEATH_REASON_HEADER,
        DEATH_DETAIL_HEADER,
        DEATH_QUEUE_HEADER,
        "x-death",
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-delivery-count",
    }
)


class DlqToolSettings(BrokerSettings, TopologySettings):
    """What the tool reads from the environment: the broker URL, the topology prefix, the retry stages."""


@dataclass(frozen=True)
class QueueCounts:
    """Messages ready in a consumer queue, its retry stages and its DLQ."""

    queue: str
    dlq: str
    # None: the queue does not exist (no service of this topology has declared it yet).
    ready: int | None
    retrying: int | None
    dead: int | None


@dataclass(frozen=True)
class DeadLetter:
    """What `show` reports of one dead letter."""

    event_id: str | None
    event_type: str | None
    source: str | None
    reason: str
    detail: str | None
    retries: int
    routing_key: str | None
    size: int


@dataclass(frozen=True)
class ReplayResult:
    """What `replay` did: the event ids sent back, and the dead letters it could not send (left in the DLQ)."""

    replayed: list[str]
    failed: list[str]


async def _ready_count(connection: AbstractRobustConnection, name: str) -> int | None:
    # A passive declare of a missing queue closes its channel: one channel per question.
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()


def _total(counts: Sequence[int | None]) -> int | None:
    present = [count for count in counts if count is not None]
    return sum(present) if present else None


async def list_counts(connection: AbstractRobustConnection, topo: Topology) -> list[QueueCounts]:
    """Per consumer queue: ready messages, messages waiting in its retry stages, dead letters (None for a queue
    that does not exist yet)."""
    counts = []
    for spec in topo.queues:
        retrying = [await _ready_count(connection, name) for name in spec.retry_queue_names]
        counts.append(
            QueueCounts(
                queue=spec.name,
                dlq=spec.dlq_name,
                ready=await _ready_count(connection, spec.name),
                retrying=_total(retrying),
                dead=await _ready_count(connection, spec.dlq_name),
            )
        )
    return counts


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """A dead letter's event id, type, source and why it died, read without trusting the body."""
    headers = message.headers or {}
    event_type = source = None
    try:
        body = json.loads(message.body)
        if isinstance(body, dict):
            event_type = _optional_text(body.get("type"))
            source = _optional_text(body.get("source"))
    except (ValueError, UnicodeDecodeError):
        pass
    # A binary-mode message keeps its attributes in ce- headers.
    event_type = event_type or _optional_text(headers.get("ce-type"))
    source = source or _optional_text(headers.get("ce-source"))
    reason = _optional_text(headers.get(DEATH_REASON_HEADER))
    if reason is None:
        # Dead-lettered by the broker itself (delivery limit: a consumer died on it again and again).
        broker_reason = _optional_text(headers.get("x-first-death-reason"))
        reason = f"broker:{broker_reason}" if broker_reason else "unknown"
    retries = headers.get(RETRIES_HEADER, 0)
    return DeadLetter(
        event_id=message.message_id,
        event_type=event_type,
        source=source,
        reason=reason,
        detail=_optional_text(headers.get(DEATH_DETAIL_HEADER)),
        retries=retries if isinstance(retries, int) else 0,
        routing_key=_optional_text(headers.get(ROUTING_KEY_HEADER)) or message.routing_key,
        size=len(message.body),
    )


async def show(connection: AbstractRobustConnection, spec: QueueSpec, *, limit: int = 100) -> list[DeadLetter]:
    """Up to `limit` dead letters of `spec`'s DLQ, oldest first, all left in the DLQ."""
    channel = await connection.channel()
    held: list[AbstractIncomingMessage] = []
    try:
        queue = await channel.get_queue(spec.dlq_name, ensure=True)
        # Unacked gets: the broker hands each message once to this channel, so this walks the queue.
        while len(held) < limit and (message := await queue.get(no_ack=False, fail=False)) is not None:
            held.append(message)
        return [describe(message) for message in held]
    finally:
        # Closing the channel hands every message it held back to the DLQ.
        await channel.close()


async def replay(
    connection: AbstractRobustConnection,
    spec: QueueSpec,
    *,
    event_id: str | None = None,
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
) -> ReplayResult:
    """Send the dead letters of `spec`'s DLQ (only those whose message id is `event_id`, when given) back to
    `spec`'s queue: each is published with confirms, then acked in the DLQ. An event that dies again while the
    replay runs is left in the DLQ, not replayed a second time."""
    reader = await connection.channel()
    writer = await connection.channel(publisher_confirms=True, on_return_raises=True)
    result = ReplayResult(replayed=[], failed=[])
    try:
        dlq = await reader.get_queue(spec.dlq_name, ensure=True)
        # Each get hands over a message this channel does not hold yet; those skipped stay held (unacked) until
        # the reader closes, which gives them back to the DLQ.
        while (message := await dlq.get(no_ack=False, fail=False)) is not None:
            if event_id is not None and message.message_id != event_id:
                continue
            if message.message_id in result.replayed:
                continue  # replayed by this run and dead again: leave it for the operator
            try:
                # The default exchange routes by queue name: straight to the queue it died in.
                async with asyncio.timeout(publish_timeout):
                    await writer.default_exchange.publish(
                        copy_message(message, replay_headers(message)), spec.name, mandatory=True
                    )
            except Exception as error:
                # Held, not nacked: a nack would hand it straight back to this loop.
                result.failed.append(f"{message.message_id}: {type(error).__name__}: {error}")
                continue
            await message.ack()
            result.replayed.append(message.message_id or "")
        return result
    finally:
        await writer.close()
        await reader.close()


def replay_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The headers a replayed copy carries: the original's, without retry and death bookkeeping, plus a count
    of its replays."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _DROPPED_ON_REPLAY}
    previous = headers.get(REPLAYS_HEADER, 0)
    headers[REPLAYS_HEADER] = (previous if isinstance(previous, int) else 0) + 1
    return headers


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.tools.dlq", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="count the messages ready, retrying and dead per consumer queue")
    show_cmd = commands.add_parser("show", help="list the dead letters of a queue without removing them")
    show_cmd.add_argument("queue")
    show_cmd.add_argument("--limit", type=int, default=100)
    show_cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    replay_cmd = commands.add_parser("replay", help="send dead letters back to the queue they died in")
    replay_cmd.add_argument("queue")
    which = replay_cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="event_id", help="only the dead letter with this event (message) id")
    which.add_argument("--all", action="store_true", help="every dead letter of the queue")
    return parser


async def run(args: argparse.Namespace, settings: DlqToolSettings) -> int:
    """Carry out one parsed command; the exit status."""
    topo = broker_topology(settings.topology_prefix, settings, settings.submit_services)
    spec: QueueSpec | None = None
    if args.command != "list":
        try:
            spec = topo.queue_for(args.queue)
        except KeyError as error:
            print(error.args[0], file=sys.stderr)
            return 2
    connection = await connect(settings.rabbitmq_url.get_secret_value(), name="vixenbliss-dlq-tool")
    try:
        if spec is None:
            print(f"{'queue':<60} {'ready':>7} {'retrying':>9} {'dead':>7}")
            for counts in await list_counts(connection, topo):
                ready, retrying, dead = (_shown(value) for value in (counts.ready, counts.retrying, counts.dead))
                print(f"{counts.queue:<60} {ready:>7} {retrying:>9} {dead:>7}")
            return 0
        if await _ready_count(connection, spec.dlq_name) is None:
            print(f"{spec.dlq_name} does not exist: no service of this topology has declared it yet", file=sys.stderr)
            return 1
        if args.command == "show":
            letters = await show(connection, spec, limit=args.limit)
            for letter in letters:
                if args.json:
                    print(json.dumps(letter.__dict__))
                else:
                    print(
                        f"{letter.event_id or '-'}  {letter.event_type or '?'}  from {letter.source or '?'}  "
                        f"{letter.reason}  retries={letter.retries}  {letter.size} B  {letter.detail or ''}".rstrip()
                    )
            if not args.json:
                print(f"{len(letters)} dead letter(s) in {spec.dlq_name}")
            return 0
        result = await replay(connection, spec, event_id=args.event_id)
        for event_id in result.replayed:
            print(f"replayed {event_id} to {spec.name}")
        for failure in result.failed:
            print(f"not replayed (left in {spec.dlq_name}): {failure}", file=sys.stderr)
        if args.event_id is not None and not result.replayed and not result.failed:
            print(f"no dead letter with id {args.event_id} in {spec.dlq_name}", file=sys.stderr)
            return 1
        return 1 if result.failed else 0
    finally:
        await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    args = _parser().parse_args(argv)
    settings = load_settings(DlqToolSettings)
    return asyncio.run(run(args, settings))


def _shown(count: int | None) -> str:
    return "absent" if count is None else str(count)


if __name__ == "__main__":
    raise SystemExit(main())
