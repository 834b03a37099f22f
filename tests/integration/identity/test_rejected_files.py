"""Hostile and foreign files over HTTP: each is `rejected` with its reason, the upload deleted, nothing announced."""

from __future__ import annotations

import os
import pickle

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import AvatarCreated
from contracts.topology import CONTENT_IDENTITY_EVENTS, Topology
from services.common.storage import ObjectStorage
from tests.support.auth import bearer, new_owner
from tests.support.identity_client import complete, uploaded
from tests.support.lora_headers import checkpoint_file, flux_lora_file, lora_file, lycoris_file, sd15_lora_file
from tests.support.queues import drain_events
from tests.support.safetensors_bytes import safetensors_bytes
from tests.support.service_fixtures import TEST_LORA_MAX_BYTES

HOSTILE = {
    "sd15": (sd15_lora_file(), "wrong_architecture"),
    "flux": (flux_lora_file(), "wrong_architecture"),
    "lycoris": (lycoris_file(), "unsupported_format"),
    "checkpoint": (checkpoint_file(), "no_lora_weights"),
    "pickle": (pickle.dumps({"unet.x.lora.down.weight": list(range(100))}), "pickle"),
    "random": (os.urandom(4096), "not_safetensors"),
    "truncated": (lora_file()[:-1000], "truncated"),
    "too_large": (safetensors_bytes({"t": ("F32", [TEST_LORA_MAX_BYTES // 4])}), "too_large"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_a_hostile_file_is_rejected_with_its_reason_deleted_and_never_announced(
    identity: httpx.AsyncClient,
    storage: ObjectStorage,
    amqp: AbstractRobustConnection,
    topo: Topology,
    kind: str,
) -> None:
    data, reason = HOSTILE[kind]
    auth = bearer(new_owner())
    # Declared within the cap (else no upload URL is signed); moto does not enforce the signed length.
    registration = await uploaded(identity, auth, data, declared=min(len(data), TEST_LORA_MAX_BYTES))

    response = await complete(identity, auth, registration["lora_id"])
    again = await complete(identity, auth, registration["lora_id"])

    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["error_code"], body["details"]["reason_code"]) == ("LORA_REJECTED", reason)
    assert [f["field"] for f in body["details"]["fields"]] == ["file"]
    assert again.json() == body
    lora = (await identity.get(f"/api/v1/loras/{registration['lora_id']}", headers=auth)).json()
    assert (lora["status"], lora["rejection"]["reason"], lora["object_key"]) == ("rejected", reason, None)
    assert not await storage.exists(registration["upload_key"])
    assert await storage.keys("loras/") == []
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=1, grace=0.3)
    assert [type(payload) for _, payload in events] == [AvatarCreated]


async def test_an_empty_upload_is_rejected_as_empty(identity: httpx.AsyncClient) -> None:
    auth = bearer(new_owner())
    registration = await uploaded(identity, auth, b"", declared=1)

    response = await complete(identity, auth, registration["lora_id"])

    assert response.status_code == 422
    assert response.json()["details"]["reason_code"] == "empty"


async def test_a_file_of_another_size_than_declared_is_rejected(identity: httpx.AsyncClient) -> None:
    auth = bearer(new_owner())
    data = lora_file()
    registration = await uploaded(identity, auth, data, declared=len(data) + 5)

    response = await complete(identity, auth, registration["lora_id"])

    assert response.json()["details"]["reason_code"] == "size_mismatch"
