"""Forged events against content (real RabbitMQ, PostgreSQL, S3): with the right `source`, an event that names an
object, an owner or an aggregate the platform would not derive is dead-lettered as forged and changes nothing.

Each attack is what a compromised gateway or identity credential could publish (topic permissions let it publish
its own routing keys, with any body)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from contracts.events import AvatarUpdated, GenerationRequested, LoraReady
from contracts.object_keys import generation_image_key, lora_object_key
from contracts.topology import (
    CONTENT_GENERATION_RESULTS,
    CONTENT_IDENTITY_EVENTS,
    GATEWAY_GENERATION_REQUESTED,
    Topology,
)
from services.common.messaging.broker import Publisher
from services.common.messaging.consumer import DEATH_DETAIL_HEADER, DEATH_REASON_HEADER, DeathReason
from services.common.storage.objects import ObjectStorage
from tests.integration.common.amqp_reading import next_message
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, SHA, completed, publish, ready_avatar, started, submit, until
from tests.support.queues import drain_events

IDENTITY = "identity"


@pytest.fixture
async def publisher(amqp: AbstractRobustConnection, topo: Topology) -> AsyncIterator[Publisher]:
    """Publishes on this run's events exchange with the source a compromised service's credential may use."""
    opened = await Publisher.open(amqp, topo.events_exchange)
    yield opened
    await opened.close()


def reason_of(message: AbstractIncomingMessage) -> tuple[str, str]:
    headers = message.headers or {}
    return str(headers.get(DEATH_REASON_HEADER)), str(headers.get(DEATH_DETAIL_HEADER))


async def until_absent(storage: ObjectStorage, key: str, wait: float = 10.0) -> None:
    """Until the object is gone from the bucket."""
    async with asyncio.timeout(wait):
        while True:
            if not await storage.exists(key):
                return
            await asyncio.sleep(0.05)


async def test_a_completed_naming_another_tenants_lora_is_dead_lettered_and_never_shown(
    content: httpx.AsyncClient,
    publisher: Publisher,
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
) -> None:
    victim_lora = await storage.put_bytes(lora_object_key("aa" * 32), b"the victim's LoRA bytes")
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(content, publisher, owner, auth)
    generation = await submit(content, auth, avatar_id)
    await publish(publisher, started(generation["id"]), GATEWAY)
    await until(content, f"/api/v1/content/{generation['id']}", lambda body: body["status"] == "running", auth)

    await publish(publisher, completed(generation["id"], object_key=victim_lora.key), GATEWAY)

    dead = await next_message(amqp, topo.queue(CONTENT_GENERATION_RESULTS).dlq_name)
    reason, detail = reason_of(dead)
    assert reason == DeathReason.FORGED_FIELD.value
    assert generation_image_key(generation["id"]) in detail
    body = (await content.get(f"/api/v1/content/{generation['id']}", headers=auth)).json()
    assert (body["status"], body["image"]) == ("running", None)
    # The real result, at the derived key, is still applied afterwards.
    await publish(publisher, completed(generation["id"]), GATEWAY)
    done = await until(content, f"/api/v1/content/{generation['id']}", lambda b: b["status"] == "completed", auth)
    assert generation_image_key(generation["id"]) in done["image"]["url"]


async def test_a_late_image_purge_deletes_only_the_generations_own_object(
    content: httpx.AsyncClient,
    publisher: Publisher,
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(content, publisher, owner, auth)
    someone_elses = await storage.put_bytes(generation_image_key(str(uuid.uuid4())), b"\x89PNG another tenant's")
    shared_lora = await storage.put_bytes(lora_object_key("bb" * 32), b"a LoRA two avatars use")
    generation = await submit(content, auth, avatar_id)
    own = await storage.put_bytes(generation_image_key(generation["id"]), b"\x89PNG the canceled one's")
    canceled = await content.post(f"/api/v1/content/{generation['id']}/cancel", headers=auth)
    assert canceled.status_code == 200, canceled.text

    for victim in (someone_elses.key, shared_lora.key):
        await publish(publisher, completed(generation["id"], object_key=victim), GATEWAY)
        dead = await next_message(amqp, topo.queue(CONTENT_GENERATION_RESULTS).dlq_name)
        assert reason_of(dead)[0] == DeathReason.FORGED_FIELD.value
    # The genuine late result: its image is purged, and nothing else.
    await publish(publisher, completed(generation["id"]), GATEWAY)
    await until_absent(storage, own.key)

    assert await storage.get_bytes(someone_elses.key) == b"\x89PNG another tenant's"
    assert await storage.get_bytes(shared_lora.key) == b"a LoRA two avatars use"


async def test_a_lora_ready_at_a_key_that_is_not_its_content_address_is_refused(
    content: httpx.AsyncClient, publisher: Publisher, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, lora_id = await ready_avatar(content, publisher, owner, auth)
    # The same LoRA announced again, now pointing at an upload, at an image, or at another file's address.
    for key in (
        f"uploads/loras/{avatar_id}/{lora_id}.safetensors",
        generation_image_key(str(uuid.uuid4())),
        lora_object_key("cc" * 32),
    ):
        forged = LoraReady(
            lora_model_id=lora_id,
            avatar_id=avatar_id,
            owner_id=owner,
            object_key=key,
            sha256=SHA,
            size_bytes=1234,
            base_model="sdxl-base-1.0",
        )
        await publish(publisher, forged, IDENTITY)
        dead = await next_message(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).dlq_name)
        assert reason_of(dead)[0] == DeathReason.FORGED_FIELD.value

    generation = await submit(content, auth, avatar_id)
    [(_, requested)] = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=1)
    assert isinstance(requested, GenerationRequested) and requested.generation_id == generation["id"]
    assert requested.lora is not None and requested.lora.object_key == lora_object_key(SHA)


async def test_identity_events_cannot_move_an_avatar_or_its_lora_to_another_owner(
    content: httpx.AsyncClient, publisher: Publisher, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner, thief = new_owner(), new_owner()
    auth = bearer(owner)
    avatar_id, lora_id = await ready_avatar(content, publisher, owner, auth)
    dlq = topo.queue(CONTENT_IDENTITY_EVENTS).dlq_name

    await publish(
        publisher,
        AvatarUpdated(avatar_id=avatar_id, owner_id=thief, name="mine now", active_lora_model_id=lora_id),
        IDENTITY,
    )
    assert reason_of(await next_message(amqp, dlq))[0] == DeathReason.FORGED_FIELD.value
    # A LoRA of the thief's for the victim's avatar, and the victim's LoRA re-announced as the thief's.
    for lora_model_id in (str(uuid.uuid4()), lora_id):
        stolen = LoraReady(
            lora_model_id=lora_model_id,
            avatar_id=avatar_id,
            owner_id=thief,
            object_key=lora_object_key(SHA),
            sha256=SHA,
            size_bytes=1234,
            base_model="sdxl-base-1.0",
        )
        await publish(publisher, stolen, IDENTITY)
        assert reason_of(await next_message(amqp, dlq))[0] == DeathReason.FORGED_FIELD.value

    assert (await content.get(f"/api/v1/content/avatars/{avatar_id}", headers=bearer(thief))).status_code == 404
    mine = await content.get(f"/api/v1/content/avatars/{avatar_id}", headers=auth)
    assert mine.status_code == 200 and mine.json()["ready"] is True
    refused = await content.post(
        "/api/v1/content/generate", json={"avatar_id": avatar_id, "prompt": "p"}, headers=bearer(thief)
    )
    assert refused.status_code == 404, refused.text
