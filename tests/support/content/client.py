"""Driving content in tests: an avatar made ready the way identity announces it, submits, waits, result events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from contracts.events import EventPayload, GenerationCompleted, GenerationStarted, ImageRef
from contracts.object_keys import generation_image_key
from contracts.worker import ModelInfo
from services.common.messaging.broker import Publisher
from services.common.messaging.events import new_event
from tests.support.identity.events import ready_avatar_events

SHA = "ef" * 32
GATEWAY = "inference-gateway"


async def publish(publisher: Publisher, payload: EventPayload, source: str, time: datetime | None = None) -> str:
    """Publish `payload` as `source` (identity, inference-gateway) would; its event id."""
    event = new_event(payload, source=f"/vixenbliss/{source}", subject="test", time=time)
    await publisher.publish_event(event)
    return event.id


async def until(
    client: httpx.AsyncClient,
    path: str,
    done: Callable[[dict[str, Any]], bool],
    headers: Mapping[str, str],
    wait: float = 10.0,
) -> dict[str, Any]:
    """GET `path` until it answers 200 and `done(body)` holds (the consumers run in the background)."""
    async with asyncio.timeout(wait):
        while True:
            response = await client.get(path, headers=headers)
            if response.status_code == 200 and done(response.json()):
                return dict(response.json())
            await asyncio.sleep(0.05)


async def ready_avatar(
    content: httpx.AsyncClient, publisher: Publisher, owner_id: str, auth: Mapping[str, str], scale: float = 0.9
) -> tuple[str, str]:
    """An avatar of `owner_id` with a ready LoRA, announced as identity does, once content has projected it."""
    avatar_id, lora_id = str(uuid.uuid4()), str(uuid.uuid4())
    events = ready_avatar_events(
        avatar_id,
        lora_id,
        time=datetime.now(UTC),
        step=timedelta(milliseconds=1),
        scale=scale,
        sha256=SHA,
        size_bytes=1234,
        owner_id=owner_id,
    )
    for payload, time in events:
        await publish(publisher, payload, "identity", time)
    await until(content, f"/api/v1/content/avatars/{avatar_id}", lambda body: body["ready"], auth)
    return avatar_id, lora_id


async def submit(content: httpx.AsyncClient, auth: Mapping[str, str], avatar_id: str, **fields: Any) -> dict[str, Any]:
    """POST /api/v1/content/generate with small defaults; the 202 body."""
    body = {"avatar_id": avatar_id, "prompt": "a portrait", "width": 512, "height": 512, "steps": 4, **fields}
    response = await content.post("/api/v1/content/generate", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return dict(response.json())


def started(generation_id: str, attempt: int = 1) -> GenerationStarted:
    """The gateway's generation.started."""
    return GenerationStarted(generation_id=generation_id, attempt=attempt, worker_mode="sync")


def completed(generation_id: str, object_key: str | None = None, size: int = 512) -> GenerationCompleted:
    """The gateway's generation.completed for an image at `object_key`."""
    return GenerationCompleted(
        generation_id=generation_id,
        image=ImageRef(
            object_key=object_key or generation_image_key(generation_id),
            sha256=SHA,
            width=size,
            height=size,
            size_bytes=1234,
        ),
        generation_time_seconds=0.25,
        model_info=ModelInfo(base_model="sdxl-base-1.0", lora_applied=True, lora_scale=0.9),
    )
