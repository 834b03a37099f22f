"""Content over HTTP with real RabbitMQ, PostgreSQL and S3: projection, generate and its event, result handling."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import select
from sqlalchemy.engine import URL

from contracts.events import (
    EventPayload,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationStarted,
    ImageRef,
)
from contracts.topology import GATEWAY_GENERATION_REQUESTED, Topology
from contracts.worker import ModelInfo, Timings
from services.common.broker import Publisher
from services.common.db import create_engine
from services.common.events import new_event
from services.common.storage import ObjectStorage
from services.content.models import inbox_table
from tests.support.auth import bearer, new_owner
from tests.support.identity_client import complete, uploaded
from tests.support.identity_events import ready_avatar_events
from tests.support.lora_headers import lora_file
from tests.support.queues import drain_events

SHA = "ef" * 32


@pytest.fixture
async def publisher(amqp: AbstractRobustConnection, topo: Topology) -> AsyncIterator[Publisher]:
    """Publishes as identity or the gateway would."""
    opened = await Publisher.open(amqp, topo.events_exchange)
    yield opened
    await opened.close()


async def _publish(publisher: Publisher, payload: EventPayload, source: str, time: datetime | None = None) -> str:
    event = new_event(payload, source=f"/vixenbliss/{source}", subject="test", time=time)
    await publisher.publish_event(event)
    return event.id


async def _until(client: httpx.AsyncClient, path: str, done: Any, wait: float = 10.0) -> dict[str, Any]:
    """GET `path` until `done(body)` holds (the consumers run in the background)."""
    async with asyncio.timeout(wait):
        while True:
            response = await client.get(path)
            if response.status_code == 200 and done(response.json()):
                return dict(response.json())
            await asyncio.sleep(0.05)


async def _ready_avatar(content: httpx.AsyncClient, publisher: Publisher, scale: float = 0.9) -> tuple[str, str]:
    """An avatar with a ready LoRA, announced the way identity does, once content has projected it."""
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    events = ready_avatar_events(
        avatar_id,
        lora_id,
        time=datetime.now(UTC),
        step=timedelta(milliseconds=1),
        scale=scale,
        sha256=SHA,
        size_bytes=1234,
    )
    for payload, time in events:
        await _publish(publisher, payload, "identity", time)
    await _until(content, f"/api/v1/content/avatars/{avatar_id}", lambda body: body["ready"])
    return avatar_id, lora_id


async def _generate(content: httpx.AsyncClient, avatar_id: str, **fields: Any) -> dict[str, Any]:
    response = await content.post(
        "/api/v1/content/generate", json={"avatar_id": avatar_id, "prompt": "a portrait", **fields}
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


async def test_identity_to_content_a_ready_lora_makes_generate_emit_one_request_with_its_lora(
    identity: httpx.AsyncClient,
    content: httpx.AsyncClient,
    amqp: AbstractRobustConnection,
    topo: Topology,
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    avatar = (await identity.post("/api/v1/avatars", json={"name": "Vixen"}, headers=auth)).json()
    status = await _until(content, f"/api/v1/content/avatars/{avatar['id']}", lambda body: body["known"])
    assert status == {"id": avatar["id"], "known": True, "active_lora_id": None, "ready": False, "deleted": False}
    refused = await content.post("/api/v1/content/generate", json={"avatar_id": avatar["id"], "prompt": "x"})
    assert (refused.status_code, refused.json()["error_code"]) == (409, "CONFLICT")

    data = lora_file()
    registration = await uploaded(identity, auth, data, avatar_id=avatar["id"], default_scale=0.8)
    lora = (await complete(identity, auth, registration["lora_id"])).json()
    status = await _until(content, f"/api/v1/content/avatars/{avatar['id']}", lambda body: body["ready"])
    assert status["active_lora_id"] == lora["lora_id"]

    accepted = await _generate(content, avatar["id"], width=512, height=768, steps=4, cfg=3.0, negative_prompt="blur")

    assert accepted["status"] == "queued" and 0 <= accepted["seed"] <= 2**32 - 1
    [(envelope, requested)] = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=1)
    assert isinstance(requested, GenerationRequested)
    assert (envelope.source, envelope.subject, envelope.correlationid) == ("/vixenbliss/content",) + (
        accepted["id"],
    ) * 2
    assert (requested.generation_id, requested.avatar_id, requested.owner_id) == (
        accepted["id"],
        avatar["id"],
        owner_id,
    )
    assert requested.lora is not None
    assert requested.lora.model_dump() == {
        "lora_model_id": lora["lora_id"],
        "object_key": lora["object_key"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "scale": 0.8,
    }
    assert requested.params.model_dump() == {
        "prompt": "a portrait",
        "negative_prompt": "blur",
        "width": 512,
        "height": 768,
        "steps": 4,
        "cfg": 3.0,
        "seed": accepted["seed"],
    }
    generation = (await content.get(f"/api/v1/content/{accepted['id']}")).json()
    assert (generation["status"], generation["seed"], generation["params"]["lora_scale"]) == (
        "queued",
        accepted["seed"],
        0.8,
    )


async def test_generate_for_an_avatar_content_never_heard_of_is_a_422_naming_avatar_id(
    content: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    response = await content.post("/api/v1/content/generate", json={"avatar_id": str(uuid.uuid4()), "prompt": "x"})

    assert response.status_code == 422
    assert response.json() == {
        "error": "unknown avatar",
        "error_code": "INVALID_REQUEST",
        "details": {"fields": [{"field": "avatar_id", "reason": "unknown avatar"}]},
    }
    assert await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=0) == []


async def _processed(pg_url: URL, event_id: str, wait: float = 10.0) -> None:
    """Wait until content's inbox records `event_id` (the consumer handled it)."""
    engine = create_engine(pg_url)
    try:
        async with asyncio.timeout(wait):
            while True:
                async with engine.connect() as connection:
                    found = await connection.scalar(
                        select(inbox_table.c.event_id).where(inbox_table.c.event_id == event_id)
                    )
                if found:
                    return
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def test_result_events_move_the_status_forward_and_a_late_started_does_not_overwrite_completed(
    content: httpx.AsyncClient, publisher: Publisher, storage: ObjectStorage, pg_url: URL
) -> None:
    avatar_id, _ = await _ready_avatar(content, publisher)
    accepted = await _generate(content, avatar_id, seed=7, width=64, height=64)
    generation_id, path = accepted["id"], f"/api/v1/content/{accepted['id']}"
    assert accepted["seed"] == 7

    await _publish(publisher, GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync"), "gateway")
    running = await _until(content, path, lambda body: body["status"] == "running")
    assert running["attempts"] == 1 and running["image"] is None

    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    stored = await storage.put_bytes(f"outputs/{generation_id}.png", png, content_type="image/png")
    completed = GenerationCompleted(
        generation_id=generation_id,
        image=ImageRef(object_key=stored.key, sha256=stored.sha256 or "", width=64, height=64, size_bytes=len(png)),
        generation_time_seconds=1.25,
        model_info=ModelInfo(base_model="tiny-sdxl", lora_applied=True, lora_scale=0.9),
        timings=Timings(denoise_ms=1000.0, total_ms=1250.0, lora_source="download"),
        attempts=1,
    )
    await _publish(publisher, completed, "gateway")
    done = await _until(content, path, lambda body: body["status"] == "completed")

    assert done["generation_time_seconds"] == 1.25 and done["timings"]["total_ms"] == 1250.0
    image = done["image"]
    assert {k: image[k] for k in ("width", "height", "sha256", "size_bytes", "content_type")} == {
        "width": 64,
        "height": 64,
        "sha256": hashlib.sha256(png).hexdigest(),
        "size_bytes": len(png),
        "content_type": "image/png",
    }
    async with httpx.AsyncClient() as http:
        assert (await http.get(image["url"])).content == png

    late = await _publish(
        publisher, GenerationStarted(generation_id=generation_id, attempt=2, worker_mode="sync"), "gateway"
    )
    await _processed(pg_url, late)
    after = (await content.get(path)).json()
    assert (after["status"], after["attempts"], after["updated_at"]) == ("completed", 1, done["updated_at"])


async def test_a_failed_result_shows_the_error_code_and_no_image(
    content: httpx.AsyncClient, publisher: Publisher
) -> None:
    avatar_id, _ = await _ready_avatar(content, publisher)
    generation_id = (await _generate(content, avatar_id))["id"]

    failed = GenerationFailed(
        generation_id=generation_id, error_code="LORA_LOAD_FAILED", error="LoRA file is not safetensors", attempts=1
    )
    await _publish(publisher, failed, "gateway")
    body = await _until(content, f"/api/v1/content/{generation_id}", lambda b: b["status"] == "failed")

    assert body["error"] == {
        "error_code": "LORA_LOAD_FAILED",
        "error": "LoRA file is not safetensors",
        "retryable": False,
    }
    assert body["image"] is None


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fields"),
    [
        (
            "post",
            "/api/v1/content/generate",
            {"avatar_id": str(uuid.uuid4()), "prompt": "x", "width": 1001},
            422,
            ["width"],
        ),
        ("post", "/api/v1/content/generate", {"avatar_id": str(uuid.uuid4())}, 422, ["prompt"]),
        (
            "post",
            "/api/v1/content/generate",
            {"avatar_id": "nope", "prompt": "x", "steps": 0},
            422,
            ["avatar_id", "steps"],
        ),
        ("post", "/api/v1/content/generate", "not json", 422, ["body"]),
        ("get", "/api/v1/content/not-a-uuid", None, 422, ["generation_id"]),
        ("get", f"/api/v1/content/{uuid.uuid4()}", None, 404, []),
        ("get", "/api/v1/content/avatars/123", None, 422, ["avatar_id"]),
        ("get", f"/api/v1/content/avatars/{uuid.uuid4()}", None, 404, []),
    ],
)
async def test_every_refusal_has_the_uniform_error_shape(
    content: httpx.AsyncClient, method: str, path: str, body: Any, status: int, fields: list[str]
) -> None:
    if isinstance(body, str):
        response = await content.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = await content.request(method.upper(), path, json=body)

    assert response.status_code == status
    payload = response.json()
    assert set(payload) == {"error", "error_code", "details"}
    assert payload["error_code"] == {404: "NOT_FOUND", 422: "INVALID_REQUEST"}[status]
    assert [f["field"] for f in payload["details"]["fields"]] == fields
    assert all(f["reason"] for f in payload["details"]["fields"])
