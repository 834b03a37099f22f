"""Content over HTTP with real RabbitMQ, PostgreSQL and S3: projection, generate and its event, result handling,
authentication and ownership, listing, and the uniform error shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from typing import Any

import httpx
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from contracts.events import GenerationCompleted, GenerationFailed, GenerationRequested, ImageRef
from contracts.object_keys import generation_image_key
from contracts.topology import GATEWAY_GENERATION_REQUESTED, Topology
from contracts.worker import ModelInfo, Timings
from services.common.messaging.broker import Publisher
from services.common.messaging.events import new_event
from services.common.persistence.db import create_engine
from services.common.storage.objects import ObjectStorage
from services.content.main import create_app
from services.content.models import inbox_table
from services.content.settings import ContentSettings
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, completed, publish, ready_avatar, started, submit, until
from tests.support.identity.client import complete, uploaded
from tests.support.lora_headers import lora_file
from tests.support.queues import drain_events
from tests.support.stack.service_fixtures import serving

PREFIX = "/api/v1/content"


async def _processed(pg_url: URL, event_id: str, wait: float = 10.0) -> int:
    """Wait until content's inbox records `event_id` (the consumer handled it); how many rows it has for it."""
    engine = create_engine(pg_url)
    try:
        async with asyncio.timeout(wait):
            while True:
                async with engine.connect() as connection:
                    found = await connection.scalar(
                        select(func.count()).select_from(inbox_table).where(inbox_table.c.event_id == event_id)
                    )
                if found:
                    return int(found)
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def test_identity_to_content_a_ready_lora_makes_generate_emit_one_request_with_its_lora(
    identity: httpx.AsyncClient,
    content: httpx.AsyncClient,
    amqp: AbstractRobustConnection,
    topo: Topology,
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    avatar = (await identity.post("/api/v1/avatars", json={"name": "Vixen"}, headers=auth)).json()
    status = await until(content, f"{PREFIX}/avatars/{avatar['id']}", lambda body: body["known"], auth)
    assert status == {"id": avatar["id"], "known": True, "active_lora_id": None, "ready": False, "deleted": False}
    # The documented path, and the one it replaced in the document (still served for existing clients).
    assert (await content.get(f"{PREFIX}/avatars/{avatar['id']}/status", headers=auth)).json() == status
    refused = await content.post(f"{PREFIX}/generate", json={"avatar_id": avatar["id"], "prompt": "x"}, headers=auth)
    assert (refused.status_code, refused.json()["error_code"]) == (409, "CONFLICT")

    data = lora_file()
    registration = await uploaded(identity, auth, data, avatar_id=avatar["id"], default_scale=0.8)
    lora = (await complete(identity, auth, registration["lora_id"])).json()
    status = await until(content, f"{PREFIX}/avatars/{avatar['id']}", lambda body: body["ready"], auth)
    assert status["active_lora_id"] == lora["lora_id"]

    accepted = await submit(
        content, auth, avatar["id"], width=512, height=768, steps=4, cfg=3.0, negative_prompt="blur"
    )

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
    generation = (await content.get(f"{PREFIX}/{accepted['id']}", headers=auth)).json()
    assert (generation["status"], generation["seed"], generation["params"]["lora_scale"]) == (
        "queued",
        accepted["seed"],
        0.8,
    )


async def test_generate_for_an_avatar_content_never_heard_of_is_a_404_naming_avatar_id(
    content: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    response = await content.post(
        f"{PREFIX}/generate", json={"avatar_id": str(uuid.uuid4()), "prompt": "x"}, headers=bearer(new_owner())
    )

    assert response.status_code == 404
    body = response.json()
    assert (body["error_code"], [f["field"] for f in body["details"]["fields"]]) == ("NOT_FOUND", ["avatar_id"])
    assert await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=0) == []


async def test_someone_elses_avatar_is_404_on_its_status_and_on_generate(
    content: httpx.AsyncClient, publisher: Publisher, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner_id = new_owner()
    owner = bearer(owner_id)
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, owner)
    stranger = bearer(new_owner())

    status = await content.get(f"{PREFIX}/avatars/{avatar_id}", headers=stranger)
    generate = await content.post(f"{PREFIX}/generate", json={"avatar_id": avatar_id, "prompt": "x"}, headers=stranger)

    assert (status.status_code, status.json()["error_code"]) == (404, "NOT_FOUND")
    assert (generate.status_code, generate.json()["error_code"]) == (404, "NOT_FOUND")
    assert [f["field"] for f in generate.json()["details"]["fields"]] == ["avatar_id"]
    # Answered exactly as for an avatar that does not exist: nothing tells the stranger it does.
    unknown = await content.post(
        f"{PREFIX}/generate", json={"avatar_id": str(uuid.uuid4()), "prompt": "x"}, headers=stranger
    )
    unknown_status = await content.get(f"{PREFIX}/avatars/{uuid.uuid4()}", headers=stranger)
    assert (generate.json(), status.json()) == (unknown.json(), unknown_status.json())
    assert await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=0) == []
    # The owner still sees it.
    assert (await content.get(f"{PREFIX}/avatars/{avatar_id}", headers=owner)).json()["ready"] is True


async def test_the_avatar_list_holds_only_the_callers_avatars_and_needs_a_token(
    content: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner_id = new_owner()
    owner = bearer(owner_id)
    first, _ = await ready_avatar(content, publisher, owner_id, owner)
    second, _ = await ready_avatar(content, publisher, owner_id, owner)
    stranger_id = new_owner()
    await ready_avatar(content, publisher, stranger_id, bearer(stranger_id))

    mine = await content.get(f"{PREFIX}/avatars", headers=owner)
    theirs = await content.get(f"{PREFIX}/avatars", headers=bearer(new_owner()))
    anonymous = await content.get(f"{PREFIX}/avatars")

    assert mine.status_code == 200, mine.text
    assert [(item["id"], item["ready"]) for item in mine.json()["items"]] == [(second, True), (first, True)]
    assert mine.json()["items"][0]["name"] and mine.json()["next_cursor"] is None
    assert theirs.json() == {"items": [], "next_cursor": None}
    assert (anonymous.status_code, anonymous.json()["error_code"]) == (401, "UNAUTHORIZED")


async def test_someone_elses_generation_is_404_on_get_cancel_and_events(
    content: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner_id = new_owner()
    owner = bearer(owner_id)
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, owner)
    generation_id = (await submit(content, owner, avatar_id))["id"]
    stranger = bearer(new_owner())

    got = await content.get(f"{PREFIX}/{generation_id}", headers=stranger)
    canceled = await content.post(f"{PREFIX}/{generation_id}/cancel", headers=stranger)
    async with asyncio.timeout(10):  # a stream that started instead would never end here
        events = await content.get(f"{PREFIX}/{generation_id}/events", headers=stranger)
    missing = await content.get(f"{PREFIX}/{uuid.uuid4()}", headers=stranger)

    for response in (got, canceled, events):
        assert response.status_code == 404, response.text
        assert response.json() == missing.json()  # as if it did not exist
    # The stranger's cancel did nothing.
    mine = (await content.get(f"{PREFIX}/{generation_id}", headers=owner)).json()
    assert mine["status"] == "queued" and mine["finished_at"] is None


async def test_result_events_move_the_status_forward_and_a_late_started_does_not_overwrite_completed(
    content: httpx.AsyncClient, publisher: Publisher, storage: ObjectStorage, pg_url: URL
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
    accepted = await submit(content, auth, avatar_id, seed=7, width=64, height=64)
    generation_id, path = accepted["id"], f"{PREFIX}/{accepted['id']}"
    assert accepted["seed"] == 7

    await publish(publisher, started(generation_id), GATEWAY)
    running = await until(content, path, lambda body: body["status"] == "running", auth)
    assert running["attempts"] == 1 and running["image"] is None and running["started_at"] is not None

    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    stored = await storage.put_bytes(generation_image_key(generation_id), png, content_type="image/png")
    done_event = GenerationCompleted(
        generation_id=generation_id,
        image=ImageRef(object_key=stored.key, sha256=stored.sha256 or "", width=64, height=64, size_bytes=len(png)),
        generation_time_seconds=1.25,
        model_info=ModelInfo(base_model="tiny-sdxl", lora_applied=True, lora_scale=0.9),
        timings=Timings(denoise_ms=1000.0, total_ms=1250.0, lora_source="download"),
        attempts=1,
    )
    await publish(publisher, done_event, GATEWAY)
    done = await until(content, path, lambda body: body["status"] == "completed", auth)

    assert done["timings"]["worker_seconds"] == 1.25 and done["worker_timings"]["total_ms"] == 1250.0
    assert done["finished_at"] is not None and done["error"] is None
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

    late = await publish(publisher, started(generation_id, attempt=2), GATEWAY)
    await _processed(pg_url, late)
    after = (await content.get(path, headers=auth)).json()
    assert (after["status"], after["attempts"], after["updated_at"], after["finished_at"]) == (
        "completed",
        1,
        done["updated_at"],
        done["finished_at"],
    )


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    """A generation as answered, without what is made afresh at each read (signed URLs)."""
    image = body["image"] and {k: v for k, v in body["image"].items() if k != "url"}
    return {k: v for k, v in body.items() if k != "events_url"} | {"image": image}


async def test_a_duplicated_result_event_is_applied_once(
    content_settings: ContentSettings, publisher: Publisher, pg_url: URL
) -> None:
    """The same event (same id) delivered twice changes nothing the second time. The app takes one result at a
    time (prefetch 1), so once an event published after the duplicate is processed, the duplicate was too."""
    settings = content_settings.model_copy(update={"results_prefetch": 1})
    owner_id = new_owner()
    auth = bearer(owner_id)
    source = f"/vixenbliss/{GATEWAY}"
    async with serving(create_app(settings), "http://content") as content:
        avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
        generation_id = (await submit(content, auth, avatar_id))["id"]
        other_id = (await submit(content, auth, avatar_id))["id"]  # its events are the fences
        path = f"{PREFIX}/{generation_id}"

        # A started delivered twice while running (without the inbox, the second would touch updated_at).
        once_started = new_event(started(generation_id), source=source, subject=generation_id)
        await publisher.publish_event(once_started)
        running = await until(content, path, lambda body: body["status"] == "running", auth)
        await publisher.publish_event(once_started)
        await _processed(pg_url, await publish(publisher, started(other_id), GATEWAY))
        assert _stable((await content.get(path, headers=auth)).json()) == _stable(running)

        # A completed delivered twice.
        once_completed = new_event(completed(generation_id), source=source, subject=generation_id)
        await publisher.publish_event(once_completed)
        done = await until(content, path, lambda body: body["status"] == "completed", auth)
        await publisher.publish_event(once_completed)
        await _processed(pg_url, await publish(publisher, started(other_id, attempt=2), GATEWAY))
        assert _stable((await content.get(path, headers=auth)).json()) == _stable(done)

        assert await _processed(pg_url, once_started.id) == 1
        assert await _processed(pg_url, once_completed.id) == 1


async def test_a_failed_result_shows_the_error_code_and_no_image(
    content: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
    generation_id = (await submit(content, auth, avatar_id))["id"]

    failed = GenerationFailed(
        generation_id=generation_id, error_code="LORA_LOAD_FAILED", error="LoRA file is not safetensors", attempts=1
    )
    await publish(publisher, failed, GATEWAY)
    body = await until(content, f"{PREFIX}/{generation_id}", lambda b: b["status"] == "failed", auth)

    assert body["error"] == {
        "error_code": "LORA_LOAD_FAILED",
        "message": "LoRA file is not safetensors",
        "retryable": False,
    }
    assert body["image"] is None and body["finished_at"] is not None


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path with each path parameter filled in) of every operation the document lists."""
    operations = []
    for template, item in openapi["paths"].items():
        path = template
        for name in ("generation_id", "avatar_id"):
            path = path.replace("{" + name + "}", str(uuid.uuid4()))
        assert "{" not in path, f"a path parameter this test does not fill: {template}"
        operations += [(method.upper(), path) for method in item if method in {"get", "post", "put", "patch", "delete"}]
    return operations


async def test_every_content_route_refuses_a_call_without_a_valid_token_with_401(content: httpx.AsyncClient) -> None:
    openapi = (await content.get("/openapi.json")).json()
    operations = [(method, path) for method, path in _operations(openapi) if path.startswith(PREFIX)]
    assert {(m, p) for m, p in operations if p in {f"{PREFIX}/generate", f"{PREFIX}/limits", PREFIX}} == {
        ("POST", f"{PREFIX}/generate"),
        ("GET", f"{PREFIX}/limits"),
        ("GET", PREFIX),
    }
    assert len(operations) >= 7, operations
    forged = {"Authorization": "Bearer " + base64.urlsafe_b64encode(b'{"alg":"none"}').decode() + ".e30."}

    for method, path in operations:
        for headers in ({}, forged, {"Authorization": "Basic Zm9vOmJhcg=="}):
            async with asyncio.timeout(10):
                response = await content.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error_code"] == "UNAUTHORIZED"
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)


async def test_get_on_generate_is_405_naming_post_in_allow(content: httpx.AsyncClient) -> None:
    response = await content.get(f"{PREFIX}/generate", headers=bearer(new_owner()))

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert set(response.json()) == {"error", "error_code", "details"}


async def test_the_list_is_the_callers_newest_first_in_keyset_pages_with_filters(
    content: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    first_avatar, _ = await ready_avatar(content, publisher, owner_id, auth)
    second_avatar, _ = await ready_avatar(content, publisher, owner_id, auth)
    submitted = [
        (await submit(content, auth, avatar, prompt=f"picture {i}"))["id"]
        for i, avatar in enumerate([first_avatar, second_avatar, first_avatar, second_avatar, first_avatar])
    ]
    stranger_id = new_owner()
    stranger = bearer(stranger_id)
    stranger_avatar, _ = await ready_avatar(content, publisher, stranger_id, stranger)
    strangers = (await submit(content, stranger, stranger_avatar))["id"]
    await publish(publisher, started(submitted[1]), GATEWAY)
    await until(content, f"{PREFIX}/{submitted[1]}", lambda body: body["status"] == "running", auth)

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await content.get(PREFIX, params=params, headers=auth)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item["id"] for item in page["items"]])
        assert all(item["events_url"] is None for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "paging does not end"

    newest_first = list(reversed(submitted))
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]

    async def listed(headers: dict[str, str], **params: Any) -> list[str]:
        response = await content.get(PREFIX, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await listed(auth, avatar_id=first_avatar) == [submitted[4], submitted[2], submitted[0]]
    assert await listed(auth, avatar_id=second_avatar, status="queued") == [submitted[3]]
    assert await listed(auth, status="running") == [submitted[1]]
    assert await listed(auth, status="completed") == []
    assert await listed(auth, avatar_id=stranger_avatar) == []
    assert await listed(stranger) == [strangers]

    first_page = (await content.get(PREFIX, params={"limit": 2}, headers=auth)).json()
    real = first_page["next_cursor"]
    # Every string of the documented shape is a position (a changed character names another one: a page, maybe
    # empty); any other string is a 422 naming `cursor` ("B" last: the spare bits set; the earlier JSON form).
    elsewhere = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBA")
    assert (await content.get(PREFIX, params={"cursor": elsewhere}, headers=auth)).status_code == 200
    forged = base64.urlsafe_b64encode(b'{"t":"yesterday","id":"x"}').decode().rstrip("=")
    for tampered in (real[:-1] + "B", forged, real + "$", real + "A", "x" * 500):
        response = await content.get(PREFIX, params={"cursor": tampered}, headers=auth)
        assert response.status_code == 422, (tampered, response.text)
        assert [f["field"] for f in response.json()["details"]["fields"]] == ["cursor"], tampered
    bad_status = await content.get(PREFIX, params={"status": "lost"}, headers=auth)
    assert [f["field"] for f in bad_status.json()["details"]["fields"]] == ["status"]


# (method, path, body, with a token, status, error code, refused fields)
_REFUSALS: list[tuple[str, str, Any, bool, int, str, list[str]]] = [
    ("POST", f"{PREFIX}/generate", {"avatar_id": str(uuid.uuid4()), "prompt": "x", "width": 1001}, True, 422,
     "INVALID_REQUEST", ["width"]),
    ("POST", f"{PREFIX}/generate", {"avatar_id": str(uuid.uuid4())}, True, 422, "INVALID_REQUEST", ["prompt"]),
    ("POST", f"{PREFIX}/generate", {"avatar_id": "nope", "prompt": "x", "steps": 0}, True, 422, "INVALID_REQUEST",
     ["avatar_id", "steps"]),
    ("POST", f"{PREFIX}/generate", "not json", True, 422, "INVALID_REQUEST", ["body"]),
    ("POST", f"{PREFIX}/generate", {"avatar_id": str(uuid.uuid4()), "prompt": "x"}, True, 404, "NOT_FOUND",
     ["avatar_id"]),
    ("POST", f"{PREFIX}/generate", {"avatar_id": str(uuid.uuid4()), "prompt": "x"}, False, 401, "UNAUTHORIZED", []),
    ("GET", f"{PREFIX}/generate", None, True, 405, "INVALID_REQUEST", []),
    ("GET", f"{PREFIX}/not-a-uuid", None, True, 404, "NOT_FOUND", []),
    ("GET", f"{PREFIX}/{uuid.uuid4()}", None, True, 404, "NOT_FOUND", []),
    ("POST", f"{PREFIX}/{uuid.uuid4()}/cancel", None, True, 404, "NOT_FOUND", []),
    ("GET", f"{PREFIX}/avatars/123", None, True, 422, "INVALID_REQUEST", ["avatar_id"]),
    ("GET", f"{PREFIX}/avatars/{uuid.uuid4()}", None, True, 404, "NOT_FOUND", []),
    ("GET", PREFIX + "?limit=0", None, True, 422, "INVALID_REQUEST", ["limit"]),
]  # fmt: skip


async def test_every_refusal_has_the_uniform_error_shape(content: httpx.AsyncClient) -> None:
    auth = bearer(new_owner())
    for method, path, body, with_token, status, code, fields in _REFUSALS:
        case = (method, path, body)
        headers = dict(auth) if with_token else {}
        if isinstance(body, str):
            headers["content-type"] = "application/json"
            response = await content.request(method, path, content=body, headers=headers)
        else:
            response = await content.request(method, path, json=body, headers=headers)

        assert response.status_code == status, (case, response.text)
        payload = response.json()
        assert set(payload) == {"error", "error_code", "details"}, case
        assert payload["error"] and payload["error_code"] == code, case
        assert [f["field"] for f in payload["details"]["fields"]] == fields, case
        assert all(f["reason"] for f in payload["details"]["fields"]), case
