"""An example requesting service: publishes generation.submit as a service of VIXEN_SUBMIT_SERVICES does, and follows
content's answers on its own reply queue.

    RABBITMQ_URL=amqp://vixenbliss-scheduler:…@host:5672/%2F \\
    python -m services.tools.requester submit --service scheduler --owner OWNER --avatar AVATAR \\
        --prompt "a portrait of sks person" [--steps 28 …] [--key KEY] [--correlation ID] [--follow]
    python -m services.tools.requester follow --service scheduler [--correlation ID] [--timeout 120]

RABBITMQ_URL is the service's own broker user (its messages carry that user as their AMQP user_id, which RabbitMQ
checks and content compares with the service the `source` names); VIXEN_TOPOLOGY_PREFIX names the topology. `submit`
prints the command as a JSON line; `follow` prints each answer as a JSON line (and acks it) until the one of
`--correlation` is final (`generation.rejected` or `generation.finished`), or every answer until `--timeout`;
`submit --follow` exits 0 once its generation completed, 1 when it was rejected, failed or canceled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from aio_pika.abc import AbstractRobustConnection

from contracts.envelope import EventEnvelope
from contracts.events import EventPayload, EventType, GenerationReply, GenerationSubmit
from contracts.topology import Topology, event_source, reply_queue_base_name, requester_name_problem, topology
from services.common.app.settings import BrokerSettings, TopologySettings, load_settings
from services.common.messaging.broker import Publisher, connect
from services.common.messaging.events import from_message, new_event, to_message

# Answers after which nothing more comes for a command.
FINAL_ANSWERS = frozenset({EventType.GENERATION_REJECTED.value, EventType.GENERATION_FINISHED.value})


class RequesterSettings(BrokerSettings, TopologySettings):
    """What the example reads: its own broker URL and the topology prefix."""


def broker_user(url: str) -> str:
    """The broker user of an AMQP URL: what the messages published over it carry as their user_id."""
    return unquote(urlsplit(url).username or "guest")


async def submit_command(
    connection: AbstractRobustConnection, topo: Topology, service: str, command: GenerationSubmit, *, user_id: str
) -> EventEnvelope:
    """Publish `command` as `service` (its source), confirmed, with the AMQP user_id of the connection's user."""
    envelope = new_event(command, source=event_source(service), subject=None, correlation_id=command.correlation_id)
    message = to_message(envelope)
    message.user_id = user_id
    publisher = await Publisher.open(connection, topo.events_exchange)
    try:
        await publisher.publish_confirmed(message, EventType.GENERATION_SUBMIT.value)
    finally:
        await publisher.close()
    return envelope


async def follow(
    connection: AbstractRobustConnection,
    topo: Topology,
    service: str,
    correlation_id: str | None,
    *,
    wait_seconds: float,
) -> list[dict[str, Any]]:
    """Content's answers to `service` from its reply queue, each printed and then acked, until `correlation_id`'s
    final one (or, without one, until `wait_seconds` pass); the answers as printed."""
    seen: list[dict[str, Any]] = []
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=10)
        queue = await channel.get_queue(topo.queue(reply_queue_base_name(service)).name)
        async with asyncio.timeout(wait_seconds), queue.iterator() as messages:
            async for message in messages:
                # Only content answers here: the broker lets no one else publish these keys.
                envelope, payload = from_message(message)
                line = answer_line(envelope, payload)
                print(json.dumps(line), flush=True)
                seen.append(line)
                await message.ack()
                mine = isinstance(payload, GenerationReply) and payload.correlation_id == correlation_id
                if mine and envelope.type in FINAL_ANSWERS:
                    break
    except TimeoutError:
        if correlation_id is not None:
            raise
    finally:
        await channel.close()
    return seen


def answer_line(envelope: EventEnvelope, payload: EventPayload) -> dict[str, Any]:
    """An answer as one JSON object: its type and id, and its data."""
    return {"type": envelope.type, "id": envelope.id, "data": payload.model_dump(mode="json")}


def _service(text: str) -> str:
    problem = requester_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="python -m services.tools.requester", description=__doc__.split("\n", 1)[0])
    commands = top.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="publish one generation.submit")
    submit.add_argument("--service", type=_service, required=True, help="this service's name (VIXEN_SUBMIT_SERVICES)")
    submit.add_argument("--owner", required=True)
    submit.add_argument("--avatar", required=True)
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--negative-prompt")
    for name in ("width", "height", "steps", "seed"):
        submit.add_argument(f"--{name}", type=int)
    for name in ("cfg", "lora-scale"):
        submit.add_argument(f"--{name}", type=float)
    submit.add_argument("--key", help="idempotency key: a repeat answers the earlier generation")
    submit.add_argument("--correlation", help="echoed in every answer (default: the command's event id)")
    submit.add_argument("--follow", action="store_true", help="then follow its answers until it is final")
    submit.add_argument("--timeout", type=float, default=120.0)
    watch = commands.add_parser("follow", help="print the answers on this service's reply queue")
    watch.add_argument("--service", type=_service, required=True)
    watch.add_argument("--correlation", help="stop after this command's final answer")
    watch.add_argument("--timeout", type=float, default=120.0)
    return top


def command_of(args: argparse.Namespace) -> GenerationSubmit:
    """The command the submit arguments describe (the request holds only what was given: defaults are content's)."""
    given = {
        "avatar_id": args.avatar,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "cfg": args.cfg,
        "seed": args.seed,
        "lora_scale": args.lora_scale,
    }
    return GenerationSubmit(
        owner_id=args.owner,
        request={name: value for name, value in given.items() if value is not None},
        idempotency_key=args.key,
        correlation_id=args.correlation,
    )


async def run(args: argparse.Namespace, settings: RequesterSettings) -> int:
    """Do what the arguments ask; the exit status."""
    url = settings.rabbitmq_url.get_secret_value()
    topo = topology(settings.topology_prefix, requesters=(args.service,))
    connection = await connect(url, name=f"vixenbliss-requester-{args.service}")
    try:
        if args.command == "follow":
            await follow(connection, topo, args.service, args.correlation, wait_seconds=args.timeout)
            return 0
        envelope = await submit_command(connection, topo, args.service, command_of(args), user_id=broker_user(url))
        correlation = args.correlation or envelope.id
        print(json.dumps({"type": envelope.type, "id": envelope.id, "correlation_id": correlation}), flush=True)
        if not args.follow:
            return 0
        seen = await follow(connection, topo, args.service, correlation, wait_seconds=args.timeout)
        final = seen[-1] if seen else {}
        return 0 if final.get("data", {}).get("status") == "completed" else 1
    finally:
        await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_settings(RequesterSettings)
    try:
        return asyncio.run(run(args, settings))
    except TimeoutError:
        print(f"no final answer within {args.timeout:g} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
