"""Cancel with real PostgreSQL, RabbitMQ and S3: an unfinished generation ends as canceled at once and the gateway
is told; a finished one cannot be canceled; a result that still comes never shows, and its image is deleted."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationCanceled, GenerationFailed
from contracts.object_keys import generation_image_key
from contracts.topology import GATEWAY_GENERATION_CANCELED, Topology
from services.common.messaging.broker import Publisher
from services.common.storage.objects import ObjectStorage
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, completed, publish, ready_avatar, started, submit, until
from tests.support.queues import drain_events


@pytest.fixture
def owner() -> str:
    return new_owner()


@pytest.fixture
def auth(owner: str) -> dict[str, str]:
    return bearer(owner)


@pytest.fixture
async def avatar_id(content: httpx.AsyncClient, publisher: Publisher, owner: str, auth: dict[str, str]) -> str:
    ready, _ = await ready_avatar(content, publisher, owner, auth)
    return ready


def path_of(generation_id: str) -> str:
    return f"/api/v1/content/{generation_id}"


async def cancel(content: httpx.AsyncClient, auth: dict[str, str], generation_id: str) -> httpx.Response:
    return await content.post(f"{path_of(generation_id)}/cancel", headers=auth)


async def until_gone(storage: ObjectStorage, key: str, wait: float = 10.0) -> None:
    """Until the object is no longer in the bucket."""
    async with asyncio.timeout(wait):
        while True:
            if not await storage.exists(key):
                return
            await asyncio.sleep(0.05)


async def test_cancel_ends_a_queued_generation_at_once_and_tells_the_gateway(
    content: httpx.AsyncClient,
    amqp: AbstractRobustConnection,
    topo: Topology,
    owner: str,
    auth: dict[str, str],
    avatar_id: str,
) -> None:
    generation = await submit(content, auth, avatar_id)

    response = await cancel(content, auth, generation["id"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"]) == (generation["id"], "canceled")
    assert body["finished_at"] is not None and body["image"] is None and body["error"] is None
    assert (await content.get(path_of(generation["id"]), headers=auth)).json()["status"] == "canceled"

    [(envelope, event)] = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_CANCELED).name, expect=1)
    assert isinstance(event, GenerationCanceled)
    assert (event.generation_id, event.owner_id, event.avatar_id) == (generation["id"], owner, avatar_id)
    assert event.canceled_at == datetime.fromisoformat(body["finished_at"])
    assert (envelope.source, envelope.subject, envelope.correlationid) == (
        "/vixenbliss/content",
        generation["id"],
        generation["id"],
    )

    again = await cancel(content, auth, generation["id"])
    assert again.status_code == 409
    assert (again.json()["error_code"], again.json()["details"]["reason_code"]) == ("CONFLICT", "GENERATION_FINISHED")


async def test_a_running_generation_can_be_canceled_and_a_finished_one_cannot(
    content: httpx.AsyncClient, publisher: Publisher, auth: dict[str, str], avatar_id: str
) -> None:
    running = (await submit(content, auth, avatar_id))["id"]
    await publish(publisher, started(running), GATEWAY)
    await until(content, path_of(running), lambda body: body["status"] == "running", auth)
    done = (await submit(content, auth, avatar_id))["id"]
    await publish(publisher, completed(done), GATEWAY)
    before = await until(content, path_of(done), lambda body: body["status"] == "completed", auth)

    assert (await cancel(content, auth, running)).json()["status"] == "canceled"
    refused = await cancel(content, auth, done)

    assert refused.status_code == 409
    assert refused.json()["error_code"] == "CONFLICT"
    after = (await content.get(path_of(done), headers=auth)).json()
    assert (after["status"], after["finished_at"], after["image"]["sha256"]) == (
        "completed",
        before["finished_at"],
        before["image"]["sha256"],
    )


async def test_a_result_after_the_cancel_never_shows_and_its_image_is_deleted(
    content: httpx.AsyncClient, publisher: Publisher, storage: ObjectStorage, auth: dict[str, str], avatar_id: str
) -> None:
    generation_id = (await submit(content, auth, avatar_id))["id"]
    key = generation_image_key(generation_id)
    await storage.put_bytes(key, b"\x89PNG late image", "image/png")
    canceled = (await cancel(content, auth, generation_id)).json()

    # The gateway had not seen the cancel yet: its result still comes.
    await publish(publisher, completed(generation_id, key), GATEWAY)
    await until_gone(storage, key)

    body = (await content.get(path_of(generation_id), headers=auth)).json()
    assert (body["status"], body["image"], body["finished_at"]) == ("canceled", None, canceled["finished_at"])
    assert (await cancel(content, auth, generation_id)).status_code == 409


async def test_a_start_or_failure_after_the_cancel_leaves_it_canceled(
    content: httpx.AsyncClient, publisher: Publisher, auth: dict[str, str], avatar_id: str
) -> None:
    generation_id = (await submit(content, auth, avatar_id))["id"]
    canceled = (await cancel(content, auth, generation_id)).json()

    await publish(publisher, started(generation_id, attempt=2), GATEWAY)
    # Applied (a result after a cancel is recorded, so updated_at moves), yet still canceled.
    seen = await until(content, path_of(generation_id), lambda body: body["attempts"] == 2, auth)
    assert (seen["status"], seen["started_at"]) == ("canceled", None)

    failure = GenerationFailed(generation_id=generation_id, error_code="CUDA_OOM", error="out of memory", attempts=3)
    await publish(publisher, failure, GATEWAY)
    body = await until(content, path_of(generation_id), lambda body: body["attempts"] == 3, auth)

    assert (body["status"], body["error"], body["finished_at"]) == ("canceled", None, canceled["finished_at"])
    assert body["updated_at"] > canceled["updated_at"]


async def test_the_list_filter_finds_canceled_generations(
    content: httpx.AsyncClient, auth: dict[str, str], avatar_id: str
) -> None:
    canceled = (await submit(content, auth, avatar_id))["id"]
    queued = (await submit(content, auth, avatar_id))["id"]
    assert (await cancel(content, auth, canceled)).status_code == 200

    def ids(status: str) -> list[Any]:
        return [item["id"] for item in listed[status]["items"]]

    listed = {
        status: (await content.get("/api/v1/content", params={"status": status}, headers=auth)).json()
        for status in ("canceled", "queued")
    }

    assert ids("canceled") == [canceled]
    assert ids("queued") == [queued]
    assert listed["canceled"]["items"][0]["status"] == "canceled"


async def test_someone_elses_generation_cannot_be_canceled(
    content: httpx.AsyncClient, auth: dict[str, str], avatar_id: str
) -> None:
    generation_id = (await submit(content, auth, avatar_id))["id"]

    stranger = await cancel(content, bearer(new_owner()), generation_id)

    assert (stranger.status_code, stranger.json()["error_code"]) == (404, "NOT_FOUND")
    assert (await content.get(path_of(generation_id), headers=auth)).json()["status"] == "queued"
