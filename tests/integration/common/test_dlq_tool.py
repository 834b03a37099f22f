"""`python -m services.tools.dlq` against the real RabbitMQ: list, show without taking, replay to completion;
a replay that cannot publish leaves the dead letter where it was."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from contracts.topology import GATEWAY_GENERATION_REQUESTED, SERVICE_CONTENT, Topology, event_source
from services.common.messaging.broker import Publisher
from services.common.messaging.consumer import DEATH_REASON_HEADER, Consumer, ReceivedEvent
from services.common.messaging.events import EncodedEvent, encode_event, new_event
from services.tools.dlq import REPLAYS_HEADER, describe, replay
from tests.integration.common.amqp_reading import all_empty, counts, dead_letter_tap, peek_messages
from tests.integration.common.conftest import FAST_RETRY_DELAYS
from tests.support.generation_events import small_request


def _request(generation_id: str) -> EncodedEvent:
    payload = small_request(generation_id)
    return encode_event(new_event(payload, source=event_source(SERVICE_CONTENT), subject=generation_id))


@dataclass
class StorageOutage:
    """Stands in for the object storage being down until the test brings it back."""

    down: bool = True


@dataclass
class GatewayStandIn:
    """A handler that needs the storage: fails while it is down, records what it handled once it is up."""

    storage: StorageOutage
    handled: list[str] = field(default_factory=list)
    arrivals: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def __call__(self, event: ReceivedEvent) -> None:
        if self.storage.down:
            raise ConnectionError("S3 endpoint unreachable")
        self.handled.append(event.envelope.id)
        self.arrivals.put_nowait(event.envelope.id)


async def _cli(rabbitmq_url: str, topo: Topology, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "RABBITMQ_URL": rabbitmq_url,
        "VIXEN_TOPOLOGY_PREFIX": topo.prefix,
        "BROKER_RETRY_DELAYS_SECONDS": ",".join(str(d) for d in FAST_RETRY_DELAYS),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.tools.dlq",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_dead_letters_are_listed_shown_and_replayed_to_completion(
    amqp: AbstractRobustConnection, fast_topo: Topology, rabbitmq_url: str
) -> None:
    spec = fast_topo.queue(GATEWAY_GENERATION_REQUESTED)
    storage = StorageOutage(down=True)
    handler = GatewayStandIn(storage)
    publisher = await Publisher.open(amqp, fast_topo.events_exchange)
    first, second = _request("gen-a"), _request("gen-b")
    async with dead_letter_tap(amqp, spec) as dead_letters:
        consumer = Consumer(amqp, spec, handler, requeue_delay=0)
        await consumer.start()
        for event in (first, second):
            await publisher.publish_confirmed(event.to_message(), event.routing_key)
        # The storage stays down past every retry stage: both end in the DLQ.
        dead = [await asyncio.wait_for(dead_letters.get(), 15) for _ in range(2)]
        # Stopping waits for the consumer's confirmed DLQ publishes and acks: the counts below are settled.
        await consumer.stop()
    assert {m.message_id for m in dead} == {first.event_id, second.event_id}
    assert all(m.headers[DEATH_REASON_HEADER] == "retries-exhausted" for m in dead)

    code, out, err = await _cli(rabbitmq_url, fast_topo, "list")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(spec.name + " ")]
    assert row.split()[1:] == ["0", "0", "2"]  # ready, retrying, dead

    code, out, err = await _cli(rabbitmq_url, fast_topo, "show", GATEWAY_GENERATION_REQUESTED)
    assert code == 0, err
    for event in (first, second):
        (line,) = [line for line in out.splitlines() if line.startswith(event.event_id)]
        assert "generation.requested" in line and "retries-exhausted" in line
        assert "ConnectionError: S3 endpoint unreachable" in line
    assert out.splitlines()[-1] == f"2 dead letter(s) in {spec.dlq_name}"

    # The storage is back; the gateway consumes again; the operator replays one, then the rest. (Both are
    # still there to replay: showing took nothing away.)
    storage.down = False
    consumer = Consumer(amqp, spec, handler, requeue_delay=0)
    await consumer.start()
    code, out, err = await _cli(rabbitmq_url, fast_topo, "replay", GATEWAY_GENERATION_REQUESTED, "--id", first.event_id)
    assert code == 0, err
    assert out.strip() == f"replayed {first.event_id} to {spec.name}"
    assert await asyncio.wait_for(handler.arrivals.get(), 10) == first.event_id

    code, out, err = await _cli(rabbitmq_url, fast_topo, "replay", spec.dlq_name, "--all")
    assert code == 0, err
    assert out.strip() == f"replayed {second.event_id} to {spec.name}"
    assert await asyncio.wait_for(handler.arrivals.get(), 10) == second.event_id

    await consumer.stop()
    await publisher.close()
    assert handler.handled == [first.event_id, second.event_id]  # each once, to completion
    assert await counts(amqp, spec) == all_empty(spec)


async def test_a_replay_that_cannot_publish_leaves_the_dead_letter_in_place(
    amqp: AbstractRobustConnection, fast_topo: Topology
) -> None:
    spec = fast_topo.queue(GATEWAY_GENERATION_REQUESTED)
    event = _request("gen-c")
    channel = await amqp.channel()  # a confirming channel: the dead letter is in the DLQ once this returns
    dlx = await channel.get_exchange(fast_topo.dead_letter_exchange)
    message = aio_pika.Message(event.body, content_type=event.content_type, message_id=event.event_id)
    await dlx.publish(message, spec.dead_letter_routing_key)
    # The queue it would go back to is gone: the publish is unroutable.
    await channel.queue_delete(spec.name)
    await channel.close()

    result = await replay(amqp, spec)

    assert result.replayed == [] and len(result.failed) == 1
    assert result.failed[0].startswith(event.event_id)
    (still_dead,) = await peek_messages(amqp, spec.dlq_name, 1)  # waits until it is handed back
    letter = describe(still_dead)
    assert (letter.event_id, letter.event_type, letter.reason) == (event.event_id, "generation.requested", "unknown")
    assert REPLAYS_HEADER not in (still_dead.headers or {})


async def test_for_a_topology_no_service_declared_list_says_absent_and_show_and_replay_exit_1(
    rabbitmq_url: str, run_prefix: str
) -> None:
    # A prefix nothing declared: a new deployment before its services first started.
    undeclared = Topology(prefix=f"{run_prefix}-undeclared", events_exchange="-", dead_letter_exchange="-", queues=())

    status, out, err = await _cli(rabbitmq_url, undeclared, "list")
    assert status == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows and all(row[1:] == ["absent", "absent", "absent"] for row in rows), out

    for command in (("show", GATEWAY_GENERATION_REQUESTED), ("replay", GATEWAY_GENERATION_REQUESTED, "--all")):
        status, out, err = await _cli(rabbitmq_url, undeclared, *command)
        assert status == 1 and "does not exist" in err and "Traceback" not in err, (out, err)
