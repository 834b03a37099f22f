"""Waiting on a generation with real PostgreSQL and RabbitMQ: `Prefer: wait=N` and the Server-Sent Events stream
wake on the change notice (PostgreSQL NOTIFY, so a change applied by another instance counts too), the stream's
order, resumption and heartbeats, and its signed links (accepted, refused, never logged)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from fastapi import FastAPI

from contracts.events import GenerationFailed
from contracts.topology import GATEWAY_GENERATION_REQUESTED, Topology, topology
from logsafe.logs import REDACTED
from services.common.messaging.broker import Publisher, declare_topology_on, delete_topology
from services.content.api import EVENTS_LINK_PURPOSE, ContentApi
from services.content.changes import ChangeHub
from services.content.main import create_app
from services.content.settings import ContentSettings
from services.content.signed_links import LinkSigner
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, completed, publish, ready_avatar, started, submit, until
from tests.support.queues import drain_events
from tests.support.service_log import service_log as service_log_of
from tests.support.stack.live_server import live_server
from tests.support.stack.service_fixtures import serving

HEARTBEAT_SECONDS = 0.2


@pytest.fixture
async def served(content_settings: ContentSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Content in-process, with its app (whose change hub a test watches)."""
    app = create_app(content_settings)
    async with serving(app, "http://content") as client:
        yield app, client


def content_api(app: FastAPI) -> ContentApi:
    return app.state.content  # type: ignore[no-any-return]


async def until_watching(hub: ChangeHub, count: int = 1, wait: float = 10.0) -> None:
    """Until `count` waiters are registered on the hub: the request is waiting, so what follows comes during it."""
    async with asyncio.timeout(wait):
        while True:
            if hub.watching >= count:
                return
            await asyncio.sleep(0.01)


def path_of(generation_id: str) -> str:
    return f"/api/v1/content/{generation_id}"


# --- Prefer: wait=N ---------------------------------------------------------------------------------------------


async def test_a_waiting_get_answers_the_completion_that_comes_during_the_wait_as_soon_as_it_is_applied(
    served: tuple[FastAPI, httpx.AsyncClient], publisher: Publisher
) -> None:
    app, client = served
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    generation_id = (await submit(client, auth, avatar_id))["id"]
    loop = asyncio.get_running_loop()

    waiting = asyncio.create_task(client.get(path_of(generation_id), headers={**auth, "Prefer": "wait=30"}))
    await until_watching(content_api(app).hub)
    await publish(publisher, started(generation_id), GATEWAY)
    # The results are consumed concurrently: completed only once started is applied, so that both are seen.
    await until(client, path_of(generation_id), lambda body: body["status"] == "running", auth)
    await publish(publisher, completed(generation_id), GATEWAY)
    published = loop.time()
    response = await asyncio.wait_for(waiting, 10)
    answered = loop.time()

    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    assert "Prefer" in response.headers["Vary"]
    body = response.json()
    assert body["status"] == "completed"
    assert body["started_at"] is not None and body["finished_at"] is not None
    assert body["image"]["url"] and body["image"]["sha256"] == "ef" * 32
    # Woken by the notice of the change, long before the 30 s window ends (no timing tighter than that here: this
    # machine may be busy; that the waiter does not poll meanwhile is the read-counting test's).
    assert answered - published < 10.0, answered - published


async def test_a_wait_with_nothing_happening_answers_the_current_status_when_the_window_ends(
    content_settings: ContentSettings, publisher: Publisher
) -> None:
    settings = content_settings.model_copy(update={"max_wait_seconds": 2.0})
    async with serving(create_app(settings), "http://content") as client:
        owner = new_owner()
        auth = bearer(owner)
        avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
        generation_id = (await submit(client, auth, avatar_id))["id"]

        begun = time.monotonic()
        response = await client.get(path_of(generation_id), headers={**auth, "Prefer": "wait=1"})
        took = time.monotonic() - begun
        assert (response.status_code, response.json()["status"]) == (200, "queued")
        assert response.headers["Preference-Applied"] == "wait=1"
        assert 1.0 <= took < 20.0, took  # the window, then the answer (generous: this machine may be busy)

        # On a submit too: the 202 comes when the window ends, with the generation as it stands.
        begun = time.monotonic()
        accepted = await client.post(
            "/api/v1/content/generate",
            json={"avatar_id": avatar_id, "prompt": "a portrait", "width": 512, "height": 512, "steps": 4},
            headers={**auth, "Prefer": "respond-async, wait=1"},
        )
        took = time.monotonic() - begun
        assert (accepted.status_code, accepted.json()["status"]) == (202, "queued")
        assert accepted.headers["Preference-Applied"] == "wait=1"
        assert 1.0 <= took < 20.0, took  # the window, then the answer (generous: this machine may be busy)

        # More than the deployment allows is capped, and the answer says what was applied.
        begun = time.monotonic()
        capped = await client.get(path_of(generation_id), headers={**auth, "Prefer": "wait=600"})
        took = time.monotonic() - begun
        assert capped.headers["Preference-Applied"] == "wait=2"
        assert 2.0 <= took < 20.0, took  # capped at 2 s, not the 600 asked

        # No preference, no wait and no Preference-Applied.
        plain = await client.get(path_of(generation_id), headers=auth)
        assert "Preference-Applied" not in plain.headers


async def test_a_waiting_submit_answers_with_the_image_when_the_gateway_finishes_within_the_window(
    served: tuple[FastAPI, httpx.AsyncClient], publisher: Publisher, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    _, client = served
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)

    async def gateway() -> str:
        # As the gateway does: take the request off its queue, then report it started and completed.
        [(_, requested)] = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=1, grace=0)
        generation_id = str(getattr(requested, "generation_id"))  # noqa: B009 (a GenerationRequested)
        await publish(publisher, started(generation_id), GATEWAY)
        await publish(publisher, completed(generation_id), GATEWAY)
        return generation_id

    serving_gateway = asyncio.create_task(gateway())
    response = await client.post(
        "/api/v1/content/generate",
        json={"avatar_id": avatar_id, "prompt": "a portrait", "width": 512, "height": 512, "steps": 4},
        headers={**auth, "Prefer": "wait=30"},
    )
    generation_id = await asyncio.wait_for(serving_gateway, 10)

    assert response.status_code == 202, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.headers["Location"] == path_of(generation_id)
    body = response.json()
    assert (body["id"], body["status"]) == (generation_id, "completed")
    assert body["image"]["url"]


async def test_a_wait_reads_the_generation_again_only_when_a_notice_says_it_changed(
    served: tuple[FastAPI, httpx.AsyncClient], publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = served
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    generation_id = (await submit(client, auth, avatar_id))["id"]
    api = content_api(app)
    plain_reads = 0
    read = api.reads.get

    async def counted_read(owner_id: str, wanted: uuid.UUID) -> Any:
        nonlocal plain_reads
        plain_reads += 1
        return await read(owner_id, wanted)

    monkeypatch.setattr(api.reads, "get", counted_read)
    shared_before = api.watching.reads.loads

    response = await client.get(path_of(generation_id), headers={**auth, "Prefer": "wait=3"})

    assert response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=3"
    # The waiter's first read, and at most one more for the submit's own notice (it may reach the listener after
    # the wait began), both through the read every waiter of the generation shares; no read of its own. A poll
    # loop, even once a second, reads at least three times in those 3 s.
    assert plain_reads == 0
    assert api.watching.reads.loads - shared_before <= 2, api.watching.reads.loads - shared_before


async def test_a_change_applied_by_another_instance_on_the_same_database_wakes_the_waiter(
    content_settings: ContentSettings, publisher: Publisher, amqp: AbstractRobustConnection, run_prefix: str
) -> None:
    # Instance A consumes another topology's queues, so only B (on the test's topology) consumes the results:
    # what wakes A's waiter is the NOTIFY of B's transaction, through PostgreSQL.
    elsewhere = topology(prefix=f"{run_prefix}-a")
    await declare_topology_on(amqp, elsewhere)
    waiting_instance = create_app(content_settings.model_copy(update={"topology_prefix": elsewhere.prefix}))
    try:
        async with (
            serving(waiting_instance, "http://content-a") as client_a,
            serving(create_app(content_settings), "http://content-b") as client_b,
        ):
            owner = new_owner()
            auth = bearer(owner)
            avatar_id, _ = await ready_avatar(client_b, publisher, owner, auth)
            generation_id = (await submit(client_a, auth, avatar_id))["id"]

            waiting = asyncio.create_task(client_a.get(path_of(generation_id), headers={**auth, "Prefer": "wait=30"}))
            await until_watching(content_api(waiting_instance).hub)
            await publish(publisher, started(generation_id), GATEWAY)
            await publish(publisher, completed(generation_id), GATEWAY)
            response = await asyncio.wait_for(waiting, 10)

            assert response.json()["status"] == "completed"
            assert response.json()["image"] is not None
    finally:
        channel = await amqp.channel()
        await delete_topology(channel, elsewhere)
        await channel.close()


# --- Server-Sent Events, over a real socket ---------------------------------------------------------------------


@pytest.fixture
def live_settings(content_settings: ContentSettings) -> ContentSettings:
    return content_settings.model_copy(update={"sse_heartbeat_seconds": HEARTBEAT_SECONDS})


@pytest.fixture
def live_content(live_settings: ContentSettings) -> Iterator[str]:
    """Content served by uvicorn (ASGITransport would hold a streamed answer back until it ends)."""
    with live_server(create_app(live_settings), "content-live") as base_url:
        yield base_url


@pytest.fixture
async def client(live_content: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_content, timeout=10) as opened:
        yield opened


SseItem = dict[str, str]


async def sse_items(response: httpx.Response) -> AsyncIterator[SseItem]:
    """The stream as items: an event's fields ({"event", "id", "data"}), {"retry": …}, or {"comment": …}."""
    fields: SseItem = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield fields
                fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value
    if fields:
        yield fields


async def next_event(items: AsyncIterator[SseItem]) -> SseItem:
    """The next event, past comments and retry hints."""
    async for item in items:
        if "event" in item or "data" in item:
            return item
    raise AssertionError("the stream ended before the next event")


async def read_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[SseItem]:
    """Every item of a stream that ends by itself (the generation is final)."""
    async with asyncio.timeout(10), client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        return [item async for item in sse_items(response)]


def events_of(items: list[SseItem]) -> list[SseItem]:
    return [item for item in items if "event" in item]


async def completed_generation(
    client: httpx.AsyncClient, publisher: Publisher, auth: dict[str, str], avatar_id: str
) -> dict[str, Any]:
    """A generation the gateway started and completed; its submit answer (events_url included)."""
    accepted = await submit(client, auth, avatar_id)
    await publish(publisher, started(accepted["id"]), GATEWAY)
    # The results are consumed concurrently: completed only once started is applied, so that the stream has 1, 2, 3.
    await until(client, path_of(accepted["id"]), lambda body: body["status"] == "running", auth)
    await publish(publisher, completed(accepted["id"]), GATEWAY)
    await until(client, path_of(accepted["id"]), lambda body: body["status"] == "completed", auth)
    return accepted


async def test_the_stream_sends_each_status_in_order_with_heartbeats_between_and_ends_after_the_final_one(
    client: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    generation_id = (await submit(client, auth, avatar_id))["id"]

    async with asyncio.timeout(15), client.stream("GET", f"{path_of(generation_id)}/events", headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        items = sse_items(response)
        assert await anext(items) == {"retry": "2000"}
        queued = await anext(items)
        # Nothing happens: the stream stays open with comments.
        assert await anext(items) == {"comment": "keep-alive"}
        await publish(publisher, started(generation_id), GATEWAY)
        running = await next_event(items)
        await publish(publisher, completed(generation_id), GATEWAY)
        final = await next_event(items)
        rest = [item async for item in items]  # returns only because the server ends the stream

    assert [(e["event"], e["id"]) for e in (queued, running, final)] == [
        ("status", "1"),
        ("status", "2"),
        ("status", "3"),
    ]
    data = [json.loads(e["data"]) for e in (queued, running, final)]
    assert [d["status"] for d in data] == ["queued", "running", "completed"]
    assert all(set(d) == {"status", "at", "generation"} for d in data)
    assert [d["generation"]["id"] for d in data] == [generation_id] * 3
    generation = data[2]["generation"]
    assert generation["status"] == "completed" and generation["image"]["url"]
    # Each event's `at` is when that status was reached.
    assert [d["at"] for d in data] == [generation["created_at"], generation["started_at"], generation["finished_at"]]
    assert all("comment" in item for item in rest), rest


async def test_a_reconnect_with_last_event_id_gets_only_the_events_after_it(
    client: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    generation_id = (await completed_generation(client, publisher, auth, avatar_id))["id"]
    url = f"{path_of(generation_id)}/events"

    everything = events_of(await read_stream(client, url, auth))
    after_two = events_of(await read_stream(client, url, {**auth, "Last-Event-ID": "2"}))
    after_all = events_of(await read_stream(client, url, {**auth, "Last-Event-ID": "3"}))

    assert [e["id"] for e in everything] == ["1", "2", "3"]
    assert [(e["id"], json.loads(e["data"])["status"]) for e in after_two] == [("3", "completed")]
    assert after_all == []


@pytest.fixture
def service_log(live_settings: ContentSettings) -> Iterator[io.StringIO]:
    """What the service would write to stderr: setup_logging's own handler (format, redaction with the settings'
    secrets) on the root logger beside pytest's handlers, writing to a fresh stream."""
    with service_log_of(live_settings.secret_values()) as text:
        yield text


def query_of(url: str) -> dict[str, str]:
    return dict(httpx.URL(url).params)


async def test_the_signed_events_url_opens_its_own_stream_without_a_token_and_nothing_else(
    client: httpx.AsyncClient,
    publisher: Publisher,
    live_settings: ContentSettings,
    service_log: io.StringIO,
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    first = await completed_generation(client, publisher, auth, avatar_id)
    second = await submit(client, auth, avatar_id)
    link = first["events_url"]
    query = query_of(link)
    assert link.startswith(f"{path_of(first['id'])}/events?") and set(query) == {"expires", "signature"}

    # As EventSource would: the link alone.
    opened = events_of(await read_stream(client, link, {}))
    assert [(e["id"], json.loads(e["data"])["status"]) for e in opened] == [
        ("1", "queued"),
        ("2", "running"),
        ("3", "completed"),
    ]

    signature = query["signature"]
    tampered = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    expired = LinkSigner.derived(live_settings.link_secret(), "content-stream-links", clock=lambda: time.time() - 3600)
    old = expired.sign(EVENTS_LINK_PURPOSE, first["id"], 60)
    refused = {
        "tampered signature": f"{path_of(first['id'])}/events?expires={query['expires']}&signature={tampered}",
        "later expiry": f"{path_of(first['id'])}/events?expires={int(query['expires']) + 3600}&signature={signature}",
        "expired link": f"{path_of(first['id'])}/events?{old.query()}",
        "another generation's link": f"{path_of(second['id'])}/events?{link.split('?', 1)[1]}",
        "expiry without signature": f"{path_of(first['id'])}/events?expires={query['expires']}",
        "no token, no signature": f"{path_of(first['id'])}/events",
    }
    for case, url in refused.items():
        response = await client.get(url)
        assert response.status_code == 401, (case, response.text)
        assert response.json()["error_code"] == "UNAUTHORIZED", case

    # The link with the right owner's token still works; another owner's token finds nothing.
    stranger = await client.get(f"{path_of(first['id'])}/events", headers=bearer(new_owner()))
    assert stranger.status_code == 404

    log_text = service_log.getvalue()
    # The access log of those requests went through the redaction, which kept the path and dropped the signature.
    assert f"{path_of(first['id'])}/events?" in log_text, log_text[-3000:]
    assert REDACTED in log_text
    assert signature not in log_text
    assert tampered not in log_text


async def test_a_failed_generation_streams_queued_then_failed_and_ends(
    client: httpx.AsyncClient, publisher: Publisher
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    generation_id = (await submit(client, auth, avatar_id))["id"]
    failure = GenerationFailed(generation_id=generation_id, error_code="CUDA_OOM", error="out of memory")

    async with asyncio.timeout(15), client.stream("GET", f"{path_of(generation_id)}/events", headers=auth) as response:
        items = sse_items(response)
        queued = await next_event(items)
        await publish(publisher, failure, GATEWAY)
        final = await next_event(items)
        rest = [item async for item in items]

    # Never started: no running event, and the final status keeps its place (3) in the numbering.
    assert [(e["id"], json.loads(e["data"])["status"]) for e in (queued, final)] == [("1", "queued"), ("3", "failed")]
    assert json.loads(final["data"])["generation"]["error"]["error_code"] == "CUDA_OOM"
    assert all("comment" in item for item in rest), rest
