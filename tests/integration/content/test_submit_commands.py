"""Generations by event on the real broker and PostgreSQL (issue 27): a trusted service's generation.submit, sent by
the example requester (`python -m services.tools.requester`) with its own broker user, becomes a generation the
gateway runs on a stand-in worker and that service follows to its end; an untrusted source, a forged one, a command
without its broker user, a malformed one, another owner's avatar, a request over the budget and duplicates are each
refused as documented (dead-lettered with their reason, or answered generation.rejected), and none reaches the
gateway's queue."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.engine import URL

from contracts.events import GenerationAccepted, GenerationRejected, GenerationSubmit
from contracts.object_keys import generation_image_key
from contracts.topology import (
    CONTENT_GENERATION_SUBMITS,
    GATEWAY_GENERATION_REQUESTED,
    Topology,
    event_source,
    reply_queue_base_name,
    topology,
)
from services.common.messaging.broker import Publisher, connect
from services.common.messaging.consumer import DEATH_DETAIL_HEADER, DEATH_REASON_HEADER, DeathReason
from services.common.messaging.events import new_event, to_message
from services.common.storage.objects import ObjectStorage
from services.content.settings import ContentSettings
from services.tools.requester import submit_command
from tests.integration.common.amqp_reading import next_message, ready_count
from tests.support.auth import bearer, new_owner
from tests.support.content.client import ready_avatar
from tests.support.gateway.harness import gateway_running, gateway_settings
from tests.support.gateway.stand_in_worker import StandInWorker
from tests.support.queues import declared_topology, drain_events
from tests.support.stack.service_fixtures import database_url, service_env

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "rabbitmqctl"], capture_output=True, check=False).returncode != 0,
    reason="needs rabbitmqctl beside the broker (the requesting services' broker users)",
)

ROOT = Path(__file__).resolve().parents[3]
SCHEDULER, INTRUDER = "scheduler", "intruder"


@dataclass(frozen=True)
class BrokerUsers:
    """Broker users of this module's own (prefix + service), and an AMQP URL for each."""

    prefix: str
    urls: dict[str, str]

    def user(self, service: str) -> str:
        return self.prefix + service


def rabbitmqctl_each(*commands: tuple[str, ...], check: bool = True) -> None:
    """Run `rabbitmqctl` once per command, all at once (each is an Erlang VM start, ~0.5 s here)."""
    running = [
        subprocess.Popen(["rabbitmqctl", "-q", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for args in commands
    ]
    codes = [process.wait(timeout=60) for process in running]
    if check and any(codes):
        raise RuntimeError(f"rabbitmqctl exited {codes} for {[args[0] for args in commands]}")


@pytest.fixture(scope="module")
def broker_users(rabbitmq_url: str) -> Iterator[BrokerUsers]:
    """A broker user for the trusted requesting service and one for a service content does not trust: real users,
    so that RabbitMQ itself checks each message's user_id against its connection's."""
    prefix = f"vb-cmd-{secrets.token_hex(3)}-"
    where = urlsplit(rabbitmq_url)
    vhost = unquote(where.path.lstrip("/")) or "/"
    passwords = {service: secrets.token_hex(12) for service in (SCHEDULER, INTRUDER)}
    address = f"{where.hostname}:{where.port or 5672}/{quote(vhost, safe='')}"
    urls = {service: f"amqp://{quote(prefix + service, safe='')}:{pw}@{address}" for service, pw in passwords.items()}
    try:
        rabbitmqctl_each(*[("add_user", prefix + service, pw) for service, pw in passwords.items()])
        rabbitmqctl_each(*[("set_permissions", "-p", vhost, prefix + s, ".*", ".*", ".*") for s in passwords])
        yield BrokerUsers(prefix, urls)
    finally:
        rabbitmqctl_each(*[("delete_user", prefix + service) for service in passwords], check=False)


@pytest.fixture
async def topo(amqp: AbstractRobustConnection, run_prefix: str) -> AsyncIterator[Topology]:
    """This run's topology with the scheduler as a requesting service (its reply queue, content's command queue),
    declared, and deleted afterwards."""
    names = topology(prefix=run_prefix, requesters=(SCHEDULER,))
    async with declared_topology(amqp, names):
        yield names


@pytest.fixture
def content_settings(
    rabbitmq_url: str, pg_url: URL, storage: ObjectStorage, topo: Topology, broker_users: BrokerUsers
) -> ContentSettings:
    return ContentSettings(
        **service_env(rabbitmq_url, storage, topo),
        CONTENT_DATABASE_URL=database_url(pg_url),
        VIXEN_SUBMIT_SERVICES=SCHEDULER,
        CONTENT_SUBMIT_BROKER_USER_PREFIX=broker_users.prefix,
    )


@pytest.fixture
async def connections(broker_users: BrokerUsers) -> AsyncIterator[dict[str, AbstractRobustConnection]]:
    """A connection per requesting service, as its own broker user."""
    opened = {service: await connect(url, name=f"test-{service}") for service, url in broker_users.urls.items()}
    try:
        yield opened
    finally:
        for connection in opened.values():
            await connection.close()


def command(avatar_id: str, owner_id: str, **request: object) -> GenerationSubmit:
    return GenerationSubmit(
        owner_id=owner_id,
        request={"avatar_id": avatar_id, "prompt": "a portrait", "width": 64, "height": 64, "steps": 2, **request},
    )


async def publish(
    connection: AbstractRobustConnection,
    topo: Topology,
    body: bytes,
    *,
    user_id: str | None,
    content_type: str = "application/cloudevents+json",
    message_id: str | None = None,
) -> None:
    """One message on generation.submit, laid out by hand (what a careless or hostile service could send)."""
    message = aio_pika.Message(body, content_type=content_type, user_id=user_id, message_id=message_id)
    publisher = await Publisher.open(connection, topo.events_exchange)
    try:
        await publisher.publish_confirmed(message, "generation.submit")
    finally:
        await publisher.close()


def event_body(payload: GenerationSubmit | dict[str, object], source: str) -> bytes:
    data = payload if isinstance(payload, dict) else payload.model_dump(mode="json")
    attributes = {"specversion": "1.0", "id": secrets.token_hex(8), "type": "generation.submit", "source": source}
    return json.dumps({**attributes, "time": "2026-12-08T10:00:00Z", "data": data}).encode()


async def requester_cli(env: dict[str, str], *args: str, wait: float = 60.0) -> tuple[int, list[dict[str, object]]]:
    """`python -m services.tools.requester ARGS` as a separate process (the services run in this loop); its exit
    status and the JSON lines it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.tools.requester",
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), wait)
    assert process.returncode is not None
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert err.decode().strip() == "" or process.returncode != 0, err.decode()
    return process.returncode, lines


async def test_a_trusted_services_command_becomes_a_generation_it_follows_to_completion(
    content: httpx.AsyncClient,
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    broker_users: BrokerUsers,
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    publisher = await Publisher.open(amqp, topo.events_exchange)
    try:
        avatar_id, _ = await ready_avatar(content, publisher, owner, auth)
    finally:
        await publisher.close()
    worker = StandInWorker("ok").start()
    try:
        async with gateway_running(gateway_settings(rabbitmq_url, storage, topo, worker.url)):
            status, lines = await requester_cli(
                {"RABBITMQ_URL": broker_users.urls[SCHEDULER], "VIXEN_TOPOLOGY_PREFIX": topo.prefix},
                *("submit", "--service", SCHEDULER, "--owner", owner, "--avatar", avatar_id),
                *("--prompt", "a portrait", "--width", "64", "--height", "64", "--steps", "2"),
                *("--correlation", "campaign-7/post-3", "--follow", "--timeout", "30"),
            )
    finally:
        worker.stop()

    assert status == 0, lines
    sent, accepted, finished = lines
    assert (sent["type"], sent["correlation_id"]) == ("generation.submit", "campaign-7/post-3")
    assert accepted["type"] == "generation.accepted" and finished["type"] == "generation.finished"
    generation_id = accepted["data"]["generation_id"]  # type: ignore[index]
    for answer in (accepted, finished):
        data = answer["data"]
        assert isinstance(data, dict)
        assert (data["requester"], data["command_id"], data["correlation_id"], data["owner_id"]) == (
            SCHEDULER,
            sent["id"],
            "campaign-7/post-3",
            owner,
        )
    data = finished["data"]
    assert isinstance(data, dict)
    assert (data["generation_id"], data["status"]) == (generation_id, "completed")
    assert data["image"]["object_key"] == generation_image_key(str(generation_id))
    assert worker.calls == 1 and worker.bodies[0]["width"] == 64
    # The owner sees it as one of their own, exactly as if they had asked for it.
    shown = (await content.get(f"/api/v1/content/{generation_id}", headers=auth)).json()
    assert (shown["status"], shown["avatar_id"], shown["params"]["steps"]) == ("completed", avatar_id, 2)


async def test_untrusted_forged_malformed_and_refused_commands_never_reach_the_gateway(
    content: httpx.AsyncClient,
    amqp: AbstractRobustConnection,
    topo: Topology,
    connections: dict[str, AbstractRobustConnection],
    broker_users: BrokerUsers,
) -> None:
    owner, other = new_owner(), new_owner()
    publisher = await Publisher.open(amqp, topo.events_exchange)
    try:
        mine, _ = await ready_avatar(content, publisher, owner, bearer(owner))
        theirs, _ = await ready_avatar(content, publisher, other, bearer(other))
    finally:
        await publisher.close()
    scheduler, intruder = connections[SCHEDULER], connections[INTRUDER]
    good = command(mine, owner)

    # A service content does not trust, under its own name and broker user.
    await publish(intruder, topo, event_body(good, event_source(INTRUDER)), user_id=broker_users.user(INTRUDER))
    # That service claiming the trusted one's source: its broker user gives it away.
    await publish(intruder, topo, event_body(good, event_source(SCHEDULER)), user_id=broker_users.user(INTRUDER))
    # The trusted source without a user_id: nothing says which broker user sent it.
    await publish(scheduler, topo, event_body(good, event_source(SCHEDULER)), user_id=None)
    # Malformed: a command without its owner, and a body that is no CloudEvent.
    await publish(scheduler, topo, event_body({"request": good.request}, event_source(SCHEDULER)), user_id=None)
    await publish(scheduler, topo, b"generate please", user_id=None, content_type="text/plain")
    # The broker itself refuses another user's user_id: no service can speak as another.
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await publish(intruder, topo, event_body(good, event_source(SCHEDULER)), user_id=broker_users.user(SCHEDULER))
    # Trusted and well formed, but what the API refuses: another owner's avatar, a request over the cost budget.
    await submit_command(scheduler, topo, SCHEDULER, command(theirs, owner), user_id=broker_users.user(SCHEDULER))
    over = command(mine, owner, width=2048, height=2048, steps=100)
    await submit_command(scheduler, topo, SCHEDULER, over, user_id=broker_users.user(SCHEDULER))

    # Each dead-lettered with its reason (handled concurrently: in any order).
    dlq = topo.queue(CONTENT_GENERATION_SUBMITS).dlq_name
    dead = [await next_message(amqp, dlq) for _ in range(5)]
    reasons = sorted((str(m.headers[DEATH_REASON_HEADER]), str(m.headers[DEATH_DETAIL_HEADER])) for m in dead)
    assert [reason for reason, _ in reasons] == sorted(
        [DeathReason.FORGED_SOURCE.value] * 3 + [DeathReason.INVALID_EVENT.value, DeathReason.NOT_STRUCTURED.value]
    )
    details = " | ".join(detail for _, detail in reasons)
    assert "generation.submit from /vixenbliss/intruder; the trusted sources are /vixenbliss/scheduler" in details
    assert f"from /vixenbliss/scheduler published by broker user {broker_users.user(INTRUDER)}" in details
    assert "from /vixenbliss/scheduler without a user_id" in details and "owner_id" in details
    # What the API refuses is answered as the API answers it.
    replies = await drain_events(amqp, topo.queue(reply_queue_base_name(SCHEDULER)).name, expect=2)
    refusals = [payload for _, payload in replies]
    assert all(isinstance(answer, GenerationRejected) for answer in refusals), refusals
    assert sorted((a.status, a.error_code) for a in refusals if isinstance(a, GenerationRejected)) == [
        (404, "NOT_FOUND"),
        (422, "INVALID_REQUEST"),
    ]
    # None of it reached the gateway, or was recorded for the owner.
    assert await ready_count(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name) == 0
    listed = (await content.get("/api/v1/content", headers=bearer(owner))).json()
    assert listed["items"] == []


async def test_a_redelivered_and_a_repeated_command_make_one_generation(
    content: httpx.AsyncClient,
    amqp: AbstractRobustConnection,
    topo: Topology,
    connections: dict[str, AbstractRobustConnection],
    broker_users: BrokerUsers,
) -> None:
    owner = new_owner()
    publisher = await Publisher.open(amqp, topo.events_exchange)
    try:
        avatar_id, _ = await ready_avatar(content, publisher, owner, bearer(owner))
    finally:
        await publisher.close()
    scheduler, user = connections[SCHEDULER], broker_users.user(SCHEDULER)
    keyed = command(avatar_id, owner).model_copy(update={"idempotency_key": "post-3"})
    # Redelivered: the very same message (one event id) twice, as the broker redelivers an unacked one.
    envelope = new_event(keyed, source=event_source(SCHEDULER), subject=None)
    twice = await Publisher.open(scheduler, topo.events_exchange)
    try:
        for _ in range(2):
            message = to_message(envelope)
            message.user_id = user
            await twice.publish_confirmed(message, "generation.submit")
    finally:
        await twice.close()
    # Repeated: the same key and request in a new command (a new event id), as a service that lost track sends.
    await submit_command(scheduler, topo, SCHEDULER, keyed, user_id=user)

    replies = await drain_events(amqp, topo.queue(reply_queue_base_name(SCHEDULER)).name, expect=2, grace=0.5)
    answers = [payload for _, payload in replies]
    assert all(isinstance(answer, GenerationAccepted) for answer in answers), answers
    first, repeat = sorted((a for a in answers if isinstance(a, GenerationAccepted)), key=lambda a: a.replayed)
    assert (first.replayed, repeat.replayed) == (False, True)
    assert first.generation_id == repeat.generation_id and first.command_id == envelope.id
    requested = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=1, grace=0.5)
    assert [payload.generation_id for _, payload in requested] == [first.generation_id]  # type: ignore[attr-defined]
