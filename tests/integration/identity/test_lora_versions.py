"""LoRA versions over HTTP with real RabbitMQ, PostgreSQL and S3: upload, verification, immutable copy, events."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import AvatarCreated, AvatarUpdated, LoraReady, LoraRetired
from contracts.topology import CONTENT_IDENTITY_EVENTS, Topology
from services.common.storage.objects import ObjectStorage
from tests.support.auth import bearer, new_owner
from tests.support.identity.client import complete, new_avatar, put_upload, register, uploaded
from tests.support.lora_headers import lora_file
from tests.support.queues import drain_events
from tests.support.stack.service_fixtures import TEST_LORA_MAX_BYTES


@pytest.fixture
def auth() -> dict[str, str]:
    return bearer(new_owner())


async def test_a_completed_upload_is_verified_copied_to_an_immutable_key_and_announced_once(
    identity: httpx.AsyncClient,
    auth: dict[str, str],
    storage: ObjectStorage,
    amqp: AbstractRobustConnection,
    topo: Topology,
) -> None:
    data = lora_file(metadata={"ss_network_dim": "4"})
    registration = await uploaded(identity, auth, data, default_scale=0.7, trigger_words=["vxn"])
    lora_id, avatar_id = registration["lora_id"], registration["avatar_id"]
    assert (registration["status"], registration["size_bytes"], registration["upload_expires_in"]) == (
        "pending_upload",
        len(data),
        900,
    )

    first = await complete(identity, auth, lora_id)
    second = await complete(identity, auth, lora_id)

    assert first.status_code == second.status_code == 200, first.text
    assert first.json() == second.json()
    lora = first.json()
    digest = hashlib.sha256(data).hexdigest()
    assert (lora["status"], lora["sha256"], lora["size_bytes"], lora["active"]) == ("ready", digest, len(data), True)
    assert lora["object_key"] == f"loras/sha256/{digest}.safetensors"
    assert (lora["rank"], lora["layer_count"], lora["components"]) == (4, 5, ["text_encoder", "text_encoder_2", "unet"])
    assert lora["target_modules"] == ["q_proj", "to_k", "to_out.0", "to_q", "v_proj"]
    assert await storage.get_bytes(lora["object_key"]) == data
    assert not await storage.exists(registration["upload_key"])
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=3, grace=0.5)
    assert [type(payload) for _, payload in events] == [AvatarCreated, LoraReady, AvatarUpdated]
    ready, updated = events[1][1], events[2][1]
    assert isinstance(ready, LoraReady) and isinstance(updated, AvatarUpdated)
    assert (ready.lora_model_id, ready.avatar_id, ready.object_key, ready.sha256) == (
        lora_id,
        avatar_id,
        lora["object_key"],
        digest,
    )
    assert (ready.size_bytes, ready.default_scale, ready.trigger_words) == (len(data), 0.7, ["vxn"])
    assert updated.active_lora_model_id == lora_id
    assert (await identity.get(f"/api/v1/avatars/{avatar_id}", headers=auth)).json()["active_lora_id"] == lora_id


async def test_a_put_to_the_old_upload_url_after_complete_cannot_change_what_is_used(
    identity: httpx.AsyncClient, auth: dict[str, str], storage: ObjectStorage
) -> None:
    good = lora_file()
    registration = await uploaded(identity, auth, good)
    ready = (await complete(identity, auth, registration["lora_id"])).json()

    # The old URL has not expired and signs this length: the store takes other bytes of that size, the worst case.
    other = good[:-1] + bytes([good[-1] ^ 0xFF])
    await put_upload(registration["upload_url"], other)
    again = await complete(identity, auth, registration["lora_id"])

    assert again.json() == ready
    assert await storage.get_bytes(ready["object_key"]) == good
    assert ready["sha256"] == hashlib.sha256(good).hexdigest()


async def test_the_upload_url_is_short_lived_and_signed_for_the_declared_size(
    identity: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    avatar = await new_avatar(identity, auth)

    registration = await register(identity, auth, avatar["id"], 12345)

    query = parse_qs(urlsplit(registration["upload_url"]).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert "content-length" in query["X-Amz-SignedHeaders"][0].split(";")


async def test_completing_before_anything_was_uploaded_is_a_409_and_changes_nothing(
    identity: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    avatar = await new_avatar(identity, auth)
    registration = await register(identity, auth, avatar["id"], 1000)

    response = await complete(identity, auth, registration["lora_id"])

    assert response.status_code == 409
    assert response.json()["error_code"] == "CONFLICT"
    lora = await identity.get(f"/api/v1/loras/{registration['lora_id']}", headers=auth)
    assert lora.json()["status"] == "pending_upload"


async def test_a_declared_size_over_the_cap_is_refused_before_any_url_is_signed(
    identity: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    avatar = await new_avatar(identity, auth)

    response = await identity.post(
        f"/api/v1/avatars/{avatar['id']}/loras", json={"size_bytes": TEST_LORA_MAX_BYTES + 1}, headers=auth
    )

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["size_bytes"]


async def test_an_unknown_base_model_is_refused_with_the_field(
    identity: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    avatar = await new_avatar(identity, auth)

    response = await identity.post(
        f"/api/v1/avatars/{avatar['id']}/loras", json={"size_bytes": 10, "base_model": "flux-dev"}, headers=auth
    )

    assert response.status_code == 422
    [field] = response.json()["details"]["fields"]
    assert field["field"] == "base_model" and "sdxl-base-1.0" in field["reason"]


async def test_versions_are_listed_newest_first_and_activated_and_retired_with_their_events(
    identity: httpx.AsyncClient, auth: dict[str, str], amqp: AbstractRobustConnection, topo: Topology
) -> None:
    avatar = await new_avatar(identity, auth)
    first = await uploaded(identity, auth, lora_file(rank=2), avatar_id=avatar["id"])
    assert (await complete(identity, auth, first["lora_id"])).status_code == 200
    second = await uploaded(identity, auth, lora_file(rank=3), avatar_id=avatar["id"], activate=False)
    assert (await complete(identity, auth, second["lora_id"])).json()["active"] is False
    await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=4)

    listed = (await identity.get(f"/api/v1/avatars/{avatar['id']}/loras", headers=auth)).json()
    activated = await identity.post(f"/api/v1/loras/{second['lora_id']}/activate", headers=auth)
    retired = await identity.post(f"/api/v1/loras/{second['lora_id']}/retire", headers=auth)
    after = (await identity.get(f"/api/v1/avatars/{avatar['id']}", headers=auth)).json()

    assert [item["lora_id"] for item in listed["items"]] == [second["lora_id"], first["lora_id"]]
    assert [item["active"] for item in listed["items"]] == [False, True]
    assert listed["next_cursor"] is None
    assert activated.json()["active_lora_id"] == second["lora_id"]
    assert (retired.json()["status"], retired.json()["active"]) == ("retired", False)
    # An avatar whose active version retires has none until another is activated.
    assert after["active_lora_id"] is None
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=3)
    assert [type(payload) for _, payload in events] == [AvatarUpdated, LoraRetired, AvatarUpdated]
    assert events[0][1].active_lora_model_id == second["lora_id"]  # type: ignore[attr-defined]
    assert events[2][1].active_lora_model_id is None  # type: ignore[attr-defined]
    again = await identity.post(f"/api/v1/loras/{second['lora_id']}/activate", headers=auth)
    assert again.status_code == 409


async def test_the_presigned_upload_url_never_reaches_the_logs(
    identity: httpx.AsyncClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registration = await uploaded(identity, auth, lora_file())
    await complete(identity, auth, registration["lora_id"])

    # The test's own HTTP client logs the URL it was given (the S3 server logs elsewhere); the service must not.
    outside = {"httpx"}
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] not in outside)
    assert registration["upload_url"] not in logged
    assert "X-Amz-Signature" not in logged


async def test_two_concurrent_completes_settle_on_one_version_and_one_announcement(
    identity: httpx.AsyncClient, auth: dict[str, str], amqp: AbstractRobustConnection, topo: Topology
) -> None:
    registration = await uploaded(identity, auth, lora_file())

    first, second = await asyncio.gather(
        complete(identity, auth, registration["lora_id"]), complete(identity, auth, registration["lora_id"])
    )

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=3, grace=0.5)
    assert [type(payload) for _, payload in events] == [AvatarCreated, LoraReady, AvatarUpdated]
