"""The hostile LoRA corpus over HTTP: each file gets its documented outcome; a refused one is `rejected` with its
reason, its upload deleted, nothing stored or announced."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from xml.etree import ElementTree

import httpx
from aio_pika.abc import AbstractRobustConnection

from contracts.events import LoraReady
from contracts.topology import CONTENT_IDENTITY_EVENTS, Topology
from services.common.storage.objects import ObjectStorage
from services.identity.lora_files import immutable_key
from tests.support.auth import bearer, new_owner
from tests.support.bad_loras import ACCEPTED, CORPUS_BASE_MODEL, HostileLora
from tests.support.identity.client import complete, new_avatar, register, send_upload, uploaded, write_past_the_url
from tests.support.lora_headers import lora_file
from tests.support.queues import drain_events
from tests.support.stack.service_fixtures import TEST_LORA_MAX_BYTES


async def test_every_hostile_file_gets_its_documented_outcome_and_a_refused_one_is_deleted_and_never_announced(
    identity: httpx.AsyncClient,
    storage: ObjectStorage,
    amqp: AbstractRobustConnection,
    topo: Topology,
    hostile_corpus: dict[str, HostileLora],
    pickle_canary: Path,
) -> None:
    # One identity for the whole corpus (a service per file would cost seconds each); each file its own avatar.
    auth = bearer(new_owner())
    outcomes: dict[str, str] = {}
    ready: dict[str, str] = {}
    for case in hostile_corpus.values():
        # Declared within the cap (else no upload URL is signed) and at least 1 byte. The store refuses a body of
        # another length than the URL signs (the empty and the oversized files), so `uploaded` writes those past it.
        declared = max(1, min(len(case.data), TEST_LORA_MAX_BYTES))
        registration = await uploaded(
            identity, auth, case.data, declared=declared, storage=storage, base_model=CORPUS_BASE_MODEL
        )
        lora_id = registration["lora_id"]

        response = await complete(identity, auth, lora_id)
        again = await complete(identity, auth, lora_id)

        assert response.status_code in (200, 422), (case.name, response.text)
        assert again.json() == response.json(), case.name
        lora = (await identity.get(f"/api/v1/loras/{lora_id}", headers=auth)).json()
        if response.status_code == 200:
            outcomes[case.name] = ACCEPTED
            ready[lora_id] = case.name
            assert lora["status"] == "ready", case.name
            assert await storage.get_bytes(lora["object_key"]) == case.data, case.name
        else:
            body = response.json()
            assert body["error_code"] == "LORA_REJECTED", (case.name, body)
            assert [f["field"] for f in body["details"]["fields"]] == ["file"], case.name
            outcomes[case.name] = body["details"]["reason_code"]
            rejection = (lora["status"], lora["rejection"]["reason"], lora["object_key"])
            assert rejection == ("rejected", outcomes[case.name], None), case.name
        assert not await storage.exists(registration["upload_key"]), case.name

    assert outcomes == {name: case.identity for name, case in hostile_corpus.items()}
    assert not await asyncio.to_thread(pickle_canary.exists), "a pickle was unpickled"
    # Only what was accepted is stored and announced.
    accepted_sha = {hashlib.sha256(hostile_corpus[name].data).hexdigest() for name in ready.values()}
    assert sorted(await storage.keys("loras/")) == sorted(immutable_key(sha) for sha in accepted_sha)
    events = await drain_events(
        amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=len(hostile_corpus) + len(ready), grace=0.3
    )
    assert sorted(str(p.lora_model_id) for _, p in events if isinstance(p, LoraReady)) == sorted(ready)


async def test_a_file_of_another_size_than_declared_is_refused_by_the_store_and_rejected_when_written_past_it(
    identity: httpx.AsyncClient, storage: ObjectStorage
) -> None:
    auth = bearer(new_owner())
    data = lora_file()
    avatar = await new_avatar(identity, auth)
    registration = await register(identity, auth, avatar["id"], len(data) + 5)

    refused = await send_upload(registration["upload_url"], data)
    # The check at completion stays for bytes that got past the URL (a store that did not enforce its length).
    await write_past_the_url(storage, registration, data)
    response = await complete(identity, auth, registration["lora_id"])

    assert refused.status_code == 403, refused.text
    assert ElementTree.fromstring(refused.content).findtext("Code") == "SignatureDoesNotMatch"
    assert response.json()["details"]["reason_code"] == "size_mismatch"
