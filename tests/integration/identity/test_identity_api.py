"""Identity over HTTP with real RabbitMQ, PostgreSQL and S3: avatars, LoRA upload and completion, their events."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import AvatarCreated, AvatarUpdated, LoraReady
from contracts.topology import CONTENT_IDENTITY_EVENTS, Topology
from tests.support.queues import drain_events
from tests.support.safetensors_bytes import safetensors_bytes
from tests.support.service_fixtures import TEST_LORA_MAX_BYTES


async def _avatar(identity: httpx.AsyncClient, name: str = "Vixen") -> dict[str, Any]:
    response = await identity.post("/api/v1/avatars", json={"owner_id": str(uuid.uuid4()), "name": name})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _upload(identity: httpx.AsyncClient, data: bytes | None, **fields: Any) -> dict[str, Any]:
    """A new avatar with a registered LoRA whose bytes (when given) were PUT to the presigned URL."""
    avatar = await _avatar(identity)
    response = await identity.post(f"/api/v1/avatars/{avatar['id']}/loras", json=fields)
    assert response.status_code == 201, response.text
    registration = dict(response.json())
    if data is not None:
        async with httpx.AsyncClient() as s3:
            put = await s3.put(registration["upload_url"], content=data)
        assert put.status_code == 200
    return registration


async def test_creating_an_avatar_publishes_avatar_created_to_the_bound_queue(
    identity: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner_id = str(uuid.uuid4())

    response = await identity.post("/api/v1/avatars", json={"owner_id": owner_id, "name": "Vixen"})

    assert response.status_code == 201
    avatar = response.json()
    assert set(avatar) == {"id", "owner_id", "name", "active_lora_id", "created_at"}
    assert (avatar["owner_id"], avatar["name"], avatar["active_lora_id"]) == (owner_id, "Vixen", None)
    [(envelope, payload)] = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=1)
    assert payload == AvatarCreated(avatar_id=avatar["id"], owner_id=owner_id, name="Vixen")
    assert (envelope.source, envelope.subject) == ("/vixenbliss/identity", avatar["id"])
    assert (await identity.get(f"/api/v1/avatars/{avatar['id']}")).json() == avatar


async def test_a_lora_put_to_the_presigned_url_and_completed_is_announced_once_with_its_sha256_and_size(
    identity: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    data = safetensors_bytes()
    registration = await _upload(identity, data, default_scale=0.7, trigger_words=["vxn"], size_bytes=len(data))
    lora_id, avatar_id = registration["lora_id"], registration["avatar_id"]
    assert registration["status"] == "pending_upload"
    assert registration["object_key"] == f"loras/{avatar_id}/{lora_id}.safetensors"
    assert registration["upload_expires_in"] == 900

    first = await identity.post(f"/api/v1/loras/{lora_id}/complete")
    second = await identity.post(f"/api/v1/loras/{lora_id}/complete")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    lora = first.json()
    assert (lora["status"], lora["sha256"], lora["size_bytes"]) == (
        "ready",
        hashlib.sha256(data).hexdigest(),
        len(data),
    )
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=3, grace=0.5)
    assert [type(payload) for _, payload in events] == [AvatarCreated, LoraReady, AvatarUpdated]
    ready, updated = events[1][1], events[2][1]
    assert isinstance(ready, LoraReady) and isinstance(updated, AvatarUpdated)
    assert (ready.lora_model_id, ready.avatar_id, ready.object_key) == (lora_id, avatar_id, registration["object_key"])
    assert (ready.sha256, ready.size_bytes, ready.default_scale, ready.trigger_words) == (
        lora["sha256"],
        len(data),
        0.7,
        ["vxn"],
    )
    assert updated.active_lora_model_id == lora_id
    assert (await identity.get(f"/api/v1/avatars/{avatar_id}")).json()["active_lora_id"] == lora_id
    assert (await identity.get(f"/api/v1/loras/{lora_id}")).json() == lora


async def test_completing_before_anything_was_uploaded_is_a_409(identity: httpx.AsyncClient) -> None:
    registration = await _upload(identity, None)

    response = await identity.post(f"/api/v1/loras/{registration['lora_id']}/complete")

    assert response.status_code == 409
    assert response.json()["error_code"] == "CONFLICT"
    assert response.json()["error"] == "object not uploaded"


async def test_an_upload_that_is_not_safetensors_is_a_422_with_the_reason_and_nothing_is_announced(
    identity: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    registration = await _upload(identity, b"\x89PNG\r\n\x1a\n" + bytes(2048))

    response = await identity.post(f"/api/v1/loras/{registration['lora_id']}/complete")

    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert body["details"]["fields"][0]["field"] == "object_key"
    assert "safetensors" in body["details"]["fields"][0]["reason"]
    assert (await identity.get(f"/api/v1/loras/{registration['lora_id']}")).json()["status"] == "pending_upload"
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=1)
    assert [type(p) for _, p in events] == [AvatarCreated]


async def test_a_declared_size_over_the_cap_is_refused_with_the_field(identity: httpx.AsyncClient) -> None:
    avatar = await _avatar(identity)

    response = await identity.post(
        f"/api/v1/avatars/{avatar['id']}/loras", json={"size_bytes": TEST_LORA_MAX_BYTES + 1}
    )

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["size_bytes"]


async def test_an_uploaded_file_over_the_cap_is_refused_at_completion(identity: httpx.AsyncClient) -> None:
    registration = await _upload(identity, safetensors_bytes({"t": ("F32", [TEST_LORA_MAX_BYTES // 4])}))

    response = await identity.post(f"/api/v1/loras/{registration['lora_id']}/complete")

    assert response.status_code == 422
    assert "too large" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/api/v1/avatars", {"owner_id": "nope", "name": "V"}, 422, "owner_id"),
        ("post", "/api/v1/avatars", {"owner_id": str(uuid.uuid4())}, 422, "name"),
        ("post", "/api/v1/avatars", {"owner_id": str(uuid.uuid4()), "name": "x" * 101}, 422, "name"),
        ("get", "/api/v1/avatars/not-a-uuid", None, 422, "avatar_id"),
        ("get", f"/api/v1/avatars/{uuid.uuid4()}", None, 404, None),
        ("post", f"/api/v1/avatars/{uuid.uuid4()}/loras", {}, 404, None),
        ("post", f"/api/v1/loras/{uuid.uuid4()}/complete", None, 404, None),
        ("get", "/api/v1/loras/123", None, 422, "lora_id"),
    ],
)
async def test_every_refusal_has_the_uniform_error_shape(
    identity: httpx.AsyncClient, method: str, path: str, body: Any, status: int, field: str | None
) -> None:
    response = await identity.request(method.upper(), path, json=body)

    assert response.status_code == status
    payload = response.json()
    assert set(payload) == {"error", "error_code", "details"}
    assert payload["error_code"] == {404: "NOT_FOUND", 422: "INVALID_REQUEST"}[status]
    assert [f["field"] for f in payload["details"]["fields"]] == ([field] if field else [])


async def test_the_presigned_upload_url_never_reaches_the_logs(
    identity: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registration = await _upload(identity, safetensors_bytes())
    await identity.post(f"/api/v1/loras/{registration['lora_id']}/complete")

    # The test's own HTTP client and moto's server log the URL they were given; the service must not.
    outside = {"httpx", "werkzeug"}
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] not in outside)
    assert registration["upload_url"] not in logged
    assert "X-Amz-Signature" not in logged
