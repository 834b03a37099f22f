"""Broker least privilege on the real RabbitMQ (issue 20): the production definitions imported into a vhost of the
test's own with `rabbitmqctl import_definitions`, the topology declared over them by the deploy step
(`python -m services.common.messaging.broker_declare`) with the operator's credential, then every broker user is tried:
what
it must do goes through; deleting, declaring or binding anything, publishing another service's events or reading
another service's queue is refused, and the autoscaler reads queue depths and nothing else. A requesting service
(VIXEN_SUBMIT_SERVICES) may publish generation.submit and read its own answers, nothing more; content may answer it
only under that service's keys."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts.events import EventType
from contracts.topology import (
    DEFAULT_RETRY_DELAYS,
    EVENT_PRODUCERS,
    GATEWAY_GENERATION_REQUESTED,
    REPLY_EVENTS,
    SERVICE_CONTENT,
    SERVICE_IDENTITY,
    Topology,
    reply_routing_key,
    routing_key,
    topology,
)
from services.common.app.runtime import open_broker
from services.common.messaging.broker import TopologyMissingError, connect, declarations, missing_declarations
from services.common.messaging.broker_declare import DeclareStepSettings, declare_and_check
from services.tools.broker_definitions import AUTOSCALER, AUTOSCALER_LIMITS, ROLES, SERVICES, definitions

pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl beside the broker")

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin"
# A requesting service of the definitions (its user is tried with the platform's roles).
REQUESTER = "scheduler"
EVERY_ROLE = (*ROLES, REQUESTER)
DELAYS = ",".join(f"{delay:g}" for delay in DEFAULT_RETRY_DELAYS)
# One AMQP operation to try on a fresh channel (`attempt` says whether the broker let it through).
Action = Callable[[AbstractChannel], Awaitable[object]]


@dataclass(frozen=True)
class Broker:
    """The vhost: its topology (declared by the deploy step) and an AMQP URL per role and for the operator."""

    vhost: str
    topo: Topology
    urls: dict[str, str]


def rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")


def run_declare_step(url: str) -> subprocess.CompletedProcess[str]:
    """The deploy step as the Job runs it: the command, with the variables the services read."""
    env = {
        **os.environ,
        "RABBITMQ_ADMIN_URL": url,
        "VIXEN_TOPOLOGY_PREFIX": "",
        "VIXEN_SUBMIT_SERVICES": REQUESTER,
        "BROKER_RETRY_DELAYS_SECONDS": DELAYS,
    }
    command = [sys.executable, "-m", "services.common.messaging.broker_declare"]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def wait_until_it_takes_logins(url: str, timeout: float = 30.0) -> None:
    """The import may still be running when the command returns: wait until the operator can log in."""

    async def logs_in() -> bool:
        try:
            connection = await connect(url, name="perm-test-probe", connect_timeout=5)
        except (aiormq.exceptions.AMQPError, ConnectionError):
            return False
        await connection.close()
        return True

    deadline = time.monotonic() + timeout
    while not asyncio.run(logs_in()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the imported operator could not log in after {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def broker(rabbitmq_url: str) -> Iterator[Broker]:
    tag = secrets.token_hex(4)
    vhost, user_prefix = f"vb-priv-{tag}", f"vb-priv-{tag}-"
    topo = topology(requesters=(REQUESTER,))
    passwords = {role: secrets.token_hex(12) for role in EVERY_ROLE}
    admin_password = secrets.token_hex(12)
    document = definitions(
        topo, passwords, vhost=vhost, user_prefix=user_prefix, admin=(user_prefix + ADMIN, admin_password)
    )
    where = urlsplit(rabbitmq_url)
    urls = {
        role: f"amqp://{quote(user_prefix + role, safe='')}:{password}@"
        f"{where.hostname}:{where.port or 5672}/{quote(vhost, safe='')}"
        for role, password in {**passwords, ADMIN: admin_password}.items()
    }
    try:
        # On standard input: the broker, not this process, would read a file (and may not see the test's).
        rabbitmqctl("import_definitions", stdin=json.dumps(document))
        wait_until_it_takes_logins(urls[ADMIN])
        step = run_declare_step(urls[ADMIN])
        assert step.returncode == 0, step.stderr
        plan = declarations(topo)
        assert step.stdout.strip() == (
            f"declared {len(plan.exchanges)} exchanges, {len(plan.queues)} queues and {len(plan.bindings)} bindings"
        )
        yield Broker(vhost, topo, urls)
    finally:
        # One rabbitmqctl per name, all at once (each is an Erlang VM start).
        cleanups = [
            subprocess.Popen(["rabbitmqctl", "-q", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for args in [
                ("delete_vhost", vhost),
                *[("delete_user", user_prefix + role) for role in (*EVERY_ROLE, ADMIN)],
            ]
        ]
        for cleanup in cleanups:
            cleanup.wait(timeout=60)


@pytest.fixture
async def users(broker: Broker) -> AsyncIterator[dict[str, AbstractConnection]]:
    """One connection per role and for the operator. Not robust ones: a robust channel reopens itself after a
    refusal, and the reopened channels would count against the autoscaler's channel limit."""
    connections: dict[str, AbstractConnection] = {
        role: await aio_pika.connect(url, timeout=10) for role, url in broker.urls.items()
    }
    try:
        yield connections
    finally:
        for connection in connections.values():
            await connection.close()


async def attempt(connection: AbstractConnection, action: Action) -> str | None:
    """Try `action` on a fresh confirm channel: None when it went through, else the broker's refusal."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        await action(channel)
    except aiormq.exceptions.ChannelAccessRefused as refused:
        return str(refused)
    finally:
        if not channel.is_closed:
            await channel.close()
    return None


def publish(exchange: str, key: str) -> Action:
    async def action(channel: AbstractChannel) -> object:
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        message = aio_pika.Message(b'{"forged": true}', message_id=secrets.token_hex(8))
        return await target.publish(message, key, mandatory=True, timeout=10)

    return action


def basic_get(queue: str) -> Action:
    async def action(channel: AbstractChannel) -> object:
        return await (await channel.get_queue(queue, ensure=False)).get(fail=False, timeout=10)

    return action


def delete_exchange(name: str) -> Action:
    return lambda channel: channel.exchange_delete(name)


def delete_queue(name: str) -> Action:
    return lambda channel: channel.queue_delete(name)


def declare_exchange(name: str) -> Action:
    return lambda channel: channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


def declare_queue(name: str) -> Action:
    return lambda channel: channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})


def bind(queue: str, exchange: str, key: str) -> Action:
    async def action(channel: AbstractChannel) -> object:
        target = await channel.get_queue(queue, ensure=False)
        return await target.bind(await channel.get_exchange(exchange, ensure=False), routing_key=key)

    return action


async def ignore(message: AbstractIncomingMessage) -> None:
    """A consumer that takes nothing (its messages go back when its channel closes)."""


def own_queues(topo: Topology, role: str) -> set[str]:
    """The queues a role consumes (its retry stages and DLQs are read by nobody but the broker and the operator)."""
    return {spec.name for spec in topo.queues_of(role)}


async def test_no_user_may_delete_declare_or_bind_anything(
    broker: Broker, users: dict[str, AbstractConnection]
) -> None:
    topo = broker.topo
    plan = declarations(topo)
    exchanges = [name for name, _ in plan.exchanges]
    queues = [name for name, _ in plan.queues]
    allowed: list[str] = []
    for role in EVERY_ROLE:
        tries: dict[str, Action] = {
            **{f"exchange.delete {name}": delete_exchange(name) for name in exchanges},
            **{f"queue.delete {name}": delete_queue(name) for name in queues},
            **{f"exchange.declare {name}": declare_exchange(name) for name in exchanges},
            f"queue.declare {role}.stolen": declare_queue(f"{role}.stolen"),
            **{f"queue.declare {name}": declare_queue(name) for name in own_queues(topo, role)},
            # A queue bound to everything would read every event: no one binds, not even to its own queue.
            **{f"queue.bind {name} #": bind(name, topo.events_exchange, "#") for name in own_queues(topo, role)},
        }
        for what, action in tries.items():
            if await attempt(users[role], action) is None:
                allowed.append(f"{role}: {what}")
    assert allowed == []
    # Nothing was taken away: the services still find their topology.
    assert await missing_declarations(users[ADMIN], topo) == []


async def test_each_user_publishes_its_own_events_and_nothing_else(
    broker: Broker, users: dict[str, AbstractConnection]
) -> None:
    topo = broker.topo
    # Every event type's key, and each answer's key for the requesting service and for one that is not there.
    keys = [routing_key(event) for event in EventType] + [
        reply_routing_key(event, who) for event in REPLY_EVENTS for who in (REQUESTER, "stranger")
    ]
    wrong: list[str] = []
    for role in EVERY_ROLE:
        expected: dict[str, tuple[Action, bool]] = {
            f"{key} on {topo.events_exchange}": (
                publish(topo.events_exchange, key),
                key in topo.published_keys(role),
            )
            for key in keys
        }
        for spec in topo.queues:
            ours = spec.base_name.startswith(f"{role}.")
            # Its own failed messages to its retry stages and its DLQ; never another service's.
            for key in (spec.dead_letter_routing_key, *spec.retry_queue_names):
                expected[f"{key} on {topo.retry_exchange}"] = (publish(topo.retry_exchange, key), ours)
            # Straight into a queue, around every exchange's permissions: never.
            expected[f"{spec.name} on the default exchange"] = (publish("", spec.name), False)
            expected[f"{spec.name} on {topo.dead_letter_exchange}"] = (
                publish(topo.dead_letter_exchange, spec.dead_letter_routing_key),
                False,
            )
        for what, (action, may) in expected.items():
            refusal = await attempt(users[role], action)
            if may and refusal is not None:
                wrong.append(f"{role} was refused {what}: {refusal}")
            if not may and refusal is None:
                wrong.append(f"{role} published {what}")
    assert wrong == []
    # The operator may (the dead-letter replay tool's way).
    assert await attempt(users[ADMIN], publish("", topo.queue(GATEWAY_GENERATION_REQUESTED).name)) is None


async def test_each_user_reads_its_own_queues_and_no_one_elses(
    broker: Broker, users: dict[str, AbstractConnection]
) -> None:
    topo = broker.topo
    queues = [name for name, _ in declarations(topo).queues]
    wrong: list[str] = []
    for role in EVERY_ROLE:
        for name in queues:
            refusal = await attempt(users[role], basic_get(name))
            may = name in own_queues(topo, role)
            if may and refusal is not None:
                wrong.append(f"{role} was refused its queue {name}: {refusal}")
            if not may and refusal is None:
                wrong.append(f"{role} read {name}")
    assert wrong == []


async def test_the_autoscaler_reads_the_gateways_queue_depth_and_is_limited_in_connections(
    broker: Broker, users: dict[str, AbstractConnection]
) -> None:
    queue = broker.topo.queue(GATEWAY_GENERATION_REQUESTED).name

    async def depth(channel: AbstractChannel) -> int:
        # What KEDA's rabbitmq scaler does over amqp: a passive queue.declare, whose answer carries the count.
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0

    reader = await users[AUTOSCALER].channel()
    before = await depth(reader)
    for _ in range(3):
        assert (
            await attempt(users[SERVICE_CONTENT], publish(broker.topo.events_exchange, "generation.requested")) is None
        )
    # Confirmed, so counted; polled a little all the same (the count is the queue leader's).
    for _ in range(100):
        if (seen := await depth(reader)) >= before + 3:
            break
        await asyncio.sleep(0.05)
    assert seen == before + 3
    await reader.close()
    # A leaked credential holds at most its limit of connections: with the fixture's one open, `limit` more tries
    # cannot all get in (fewer may: the broker counts a closed connection until it has cleaned it up).
    limit = AUTOSCALER_LIMITS["max-connections"]
    held: list[AbstractConnection] = []
    refusals = 0
    try:
        for _ in range(limit):
            try:
                held.append(await aio_pika.connect(broker.urls[AUTOSCALER], timeout=10))
            except aiormq.exceptions.InvalidFrameError:  # connection.open answered with a close
                refusals += 1
    finally:
        for connection in held:
            await connection.close()
    assert refusals >= 1 and len(held) <= limit - 1
    # It was the limit, not a broken user: once they are closed, the user gets in again.
    deadline = time.monotonic() + 10
    while True:
        try:
            await (await aio_pika.connect(broker.urls[AUTOSCALER], timeout=10)).close()
            break
        except aiormq.exceptions.InvalidFrameError:
            assert time.monotonic() < deadline, "the autoscaler's user never got a connection back"
            await asyncio.sleep(0.1)


async def test_only_the_operator_may_run_the_deploy_step(broker: Broker) -> None:
    for role in EVERY_ROLE:
        settings = DeclareStepSettings(
            RABBITMQ_ADMIN_URL=broker.urls[role],
            VIXEN_TOPOLOGY_PREFIX="",
            BROKER_RETRY_DELAYS_SECONDS=DELAYS,
            VIXEN_SUBMIT_SERVICES=REQUESTER,
        )
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await declare_and_check(settings)
    # Run again by the operator it changes nothing (the fixture ran it once over the imported definitions).
    again = run_declare_step(broker.urls[ADMIN])
    assert again.returncode == 0, again.stderr


async def test_each_service_starts_in_check_mode_with_its_own_user(broker: Broker) -> None:
    for service in SERVICES:
        requesters = broker.topo.requesters if service == SERVICE_CONTENT else ()
        async with open_broker(
            broker.urls[service], "", service=service, declare="check", requesters=requesters
        ) as runtime:
            produced = next(event for event, producer in EVENT_PRODUCERS.items() if producer == service)
            message = aio_pika.Message(b"{}", message_id=secrets.token_hex(8))
            await runtime.publisher.publish_confirmed(message, routing_key(produced))
            for spec in broker.topo.queues_of(service):
                # The consumer's way in: a passive declare, then basic.consume.
                channel = await runtime.connection.channel()
                consumed = await (await channel.get_queue(spec.name, ensure=True)).consume(ignore)
                assert consumed
                await channel.close()
    # Declaring, the development mode, needs rights no service has.
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        async with open_broker(broker.urls[SERVICE_IDENTITY], "", service=SERVICE_IDENTITY, declare="all"):
            pass


async def test_a_service_in_check_mode_names_what_is_missing_and_creates_nothing(
    broker: Broker, users: dict[str, AbstractConnection]
) -> None:
    prefix = f"undeclared-{secrets.token_hex(3)}"
    with pytest.raises(TopologyMissingError) as refused:
        async with open_broker(broker.urls[SERVICE_CONTENT], prefix, service=SERVICE_CONTENT, declare="check"):
            pass
    line = str(refused.value)
    assert "\n" not in line
    assert f"exchange {prefix}.vixen.events" in line and "python -m services.common.messaging.broker_declare" in line
    absent = topology(prefix)
    assert len(await missing_declarations(users[ADMIN], absent)) == len(declarations(absent).exchanges) + len(
        declarations(absent).queues
    )


async def test_checking_a_missing_topology_leaves_no_channel_open(broker: Broker) -> None:
    # A robust channel reopens itself after the broker closes it: a miss per exchange and queue, through the
    # autoscaler's user (8 channels at most), would exhaust its limit and lose the connection if the check left those
    # channels behind.
    plan = declarations(broker.topo)
    connection = await connect(broker.urls[AUTOSCALER], name="perm-test-check-channels")
    try:
        for _ in range(2):
            absent = topology(f"undeclared-{secrets.token_hex(3)}", requesters=broker.topo.requesters)
            assert len(await missing_declarations(connection, absent)) == len(plan.exchanges) + len(plan.queues)
        assert await missing_declarations(connection, broker.topo) == []
    finally:
        await connection.close()
