"""The broker definitions on the real RabbitMQ: loaded with `rabbitmqctl import_definitions` into a vhost of the
test's own, each service's user may publish only the events it produces and touch only its own queues."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aio_pika
import aiormq
import pytest

from contracts.events import EventType, GenerationRequested
from contracts.topology import (
    GATEWAY_GENERATION_REQUESTED,
    SERVICE_CONTENT,
    SERVICE_IDENTITY,
    SERVICE_INFERENCE_GATEWAY,
    Topology,
    topology,
)
from services.common.broker import Publisher, connect
from services.common.broker_definitions import SERVICES, definitions
from services.common.runtime import open_broker

# Quick retries: the definitions are written for the topology the services use (default delays).
pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl beside the broker")


@dataclass(frozen=True)
class Loaded:
    """A vhost loaded from the definitions: its topology and an AMQP URL per service user."""

    topo: Topology
    urls: dict[str, str]


def rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")


def wait_for_bindings(vhost: str, count: int, timeout: float = 60.0) -> None:
    """The import may finish after the command returns; bindings come last."""
    deadline = time.monotonic() + timeout
    while True:
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_bindings", "-p", vhost, "source_name", "destination_name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # One line per binding from a named exchange (the default exchange's implicit bindings have no name).
        named = [line for line in listed.stdout.splitlines()[1:] if line and not line.startswith("\t")]
        if len(named) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(named)} of {count} bindings in {vhost} after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def loaded(rabbitmq_url: str) -> Iterator[Loaded]:
    tag = secrets.token_hex(4)
    vhost, user_prefix = f"vb-perm-{tag}", f"vb-perm-{tag}-"
    passwords = {service: secrets.token_urlsafe(12) for service in SERVICES}
    topo = topology()
    admin = (f"{user_prefix}admin", secrets.token_urlsafe(12))
    loaded_definitions = definitions(topo, passwords, vhost=vhost, user_prefix=user_prefix, admin=admin)
    where = urlsplit(rabbitmq_url)
    urls = {
        service: f"amqp://{quote(user_prefix + service, safe='')}:{quote(password, safe='')}@"
        f"{where.hostname}:{where.port or 5672}/{quote(vhost, safe='')}"
        for service, password in {**passwords, "admin": admin[1]}.items()
    }
    try:
        # On standard input: the broker, not this process, would read a file (and may not see the test's).
        rabbitmqctl("import_definitions", stdin=json.dumps(loaded_definitions))
        wait_for_bindings(vhost, len(loaded_definitions["bindings"]))
        yield Loaded(topo, urls)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60, check=False)
        for service in (*SERVICES, "admin"):
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_user", user_prefix + service],
                capture_output=True,
                timeout=60,
                check=False,
            )


@pytest.fixture
async def as_service(loaded: Loaded) -> AsyncIterator[dict[str, aio_pika.abc.AbstractRobustConnection]]:
    connections = {service: await connect(url, name=f"perm-test-{service}") for service, url in loaded.urls.items()}
    try:
        yield connections
    finally:
        for connection in connections.values():
            await connection.close()


def requested() -> aio_pika.Message:
    payload = GenerationRequested.model_construct(generation_id="g-1")
    return aio_pika.Message(payload.model_dump_json().encode(), message_id=secrets.token_hex(8))


async def publish(connection: aio_pika.abc.AbstractRobustConnection, exchange: str, key: str) -> None:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        await target.publish(requested(), key, mandatory=True, timeout=10)
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_identity_is_refused_when_it_publishes_a_generation_requested(
    loaded: Loaded, as_service: dict[str, aio_pika.abc.AbstractRobustConnection]
) -> None:
    events = loaded.topo.events_exchange
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=r"generation\.requested"):
        await publish(as_service[SERVICE_IDENTITY], events, EventType.GENERATION_REQUESTED.value)
    # Its own events go through (routed to content's queue, confirmed).
    await publish(as_service[SERVICE_IDENTITY], events, EventType.AVATAR_CREATED.value)
    # Content may publish a request: it reaches the gateway's queue, which only the gateway may read.
    await publish(as_service[SERVICE_CONTENT], events, EventType.GENERATION_REQUESTED.value)
    gateway_channel = await as_service[SERVICE_INFERENCE_GATEWAY].channel()
    queue = await gateway_channel.get_queue(loaded.topo.queue(GATEWAY_GENERATION_REQUESTED).name)
    assert await queue.get(timeout=5, fail=True) is not None
    content_channel = await as_service[SERVICE_CONTENT].channel()
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        foreign = await content_channel.get_queue(loaded.topo.queue(GATEWAY_GENERATION_REQUESTED).name, ensure=False)
        await foreign.get(timeout=5, fail=False)


@pytest.mark.parametrize(
    ("service", "where"),
    [
        (SERVICE_INFERENCE_GATEWAY, "the gateway's result key on content's retry stage"),
        (SERVICE_CONTENT, "the dead-letter exchange"),
        (SERVICE_CONTENT, "the default exchange"),
        (SERVICE_INFERENCE_GATEWAY, "generation.canceled"),
    ],
)
async def test_no_service_reaches_another_services_queue_by_a_side_door(
    loaded: Loaded, as_service: dict[str, aio_pika.abc.AbstractRobustConnection], service: str, where: str
) -> None:
    topo = loaded.topo
    identity_events = topo.queue("content.identity-events")
    target = {
        "the gateway's result key on content's retry stage": (
            topo.retry_exchange,
            identity_events.retry_stages[0].name,
        ),
        "the dead-letter exchange": (topo.dead_letter_exchange, topo.queue(GATEWAY_GENERATION_REQUESTED).name),
        "the default exchange": ("", topo.queue(GATEWAY_GENERATION_REQUESTED).name),
        "generation.canceled": (topo.events_exchange, EventType.GENERATION_CANCELED.value),
    }[where]
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await publish(as_service[service], *target)


async def test_each_service_starts_with_its_own_user_declaring_only_its_part(loaded: Loaded) -> None:
    for service in SERVICES:
        async with open_broker(loaded.urls[service], "", service=service, declare="own") as broker:
            # Its publisher (a confirm channel on the events exchange) works with its user; its own retry key too.
            if service != SERVICE_IDENTITY:
                own = loaded.topo.queues_of(service)[0]
                retries = await Publisher.open(broker.connection, loaded.topo.retry_exchange)
                await retries.publish_confirmed(requested(), own.retry_stages[0].name)
                await retries.close()
    # Declaring everything needs rights no service has: that is what `declare="own"` is for.
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        async with open_broker(loaded.urls[SERVICE_IDENTITY], "", service=SERVICE_IDENTITY, declare="all"):
            pass


async def test_the_operators_user_may_do_what_no_service_may(loaded: Loaded) -> None:
    connection = await connect(loaded.urls["admin"], name="perm-test-admin")
    try:
        await publish(connection, "", loaded.topo.queue(GATEWAY_GENERATION_REQUESTED).name)  # the replay tool's way
    finally:
        await connection.close()
