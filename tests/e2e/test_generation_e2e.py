"""One generation over the real path: identity → content → RabbitMQ → gateway → worker → S3 → content; and the
same path driven by content's generated client, as docs/content.md shows it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from contracts.events import EventType, GenerationCompleted
from contracts.topology import topology
from scripts.stacklib import flow
from scripts.stacklib.runner import LocalStack
from services.common.messaging.events import from_message
from services.common.storage.objects import ObjectStorage
from tests.support.bad_loras import with_nan
from tests.support.gateway.fakes import image_size
from tests.support.generated_client import REPO, documented_program, generate_client, mypy_strict
from tests.support.queues import bound_queue

pytestmark = pytest.mark.slow


@pytest.fixture
async def completed_events(stack: LocalStack, amqp: AbstractRobustConnection) -> AsyncIterator[AbstractQueue]:
    """A test queue bound to generation.completed on this run's exchange."""
    exchange = topology(stack.config.topology_prefix).events_exchange
    async with bound_queue(amqp, exchange, EventType.GENERATION_COMPLETED.value) as queue:
        yield queue


@pytest.fixture
async def generation_messages(stack: LocalStack, amqp: AbstractRobustConnection) -> AsyncIterator[AbstractQueue]:
    """A test queue bound to every generation.* event of this run's exchange."""
    async with bound_queue(amqp, topology(stack.config.topology_prefix).events_exchange, "generation.*") as queue:
        yield queue


async def trace_ids_of(queue: AbstractQueue, generation_id: str) -> dict[str, str]:
    """The trace id in the traceparent of each message of the generation, by routing key."""
    found: dict[str, str] = {}
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        envelope, _ = from_message(message)
        if envelope.subject == generation_id:
            header = str((message.headers or {}).get("traceparent", ""))
            assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", header), (envelope.type, header)
            found[envelope.type] = header.split("-")[1]
    return found


async def completed_event(queue: AbstractQueue, generation_id: str, wait: float = 30.0) -> GenerationCompleted:
    async with asyncio.timeout(wait):
        while True:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            _, payload = from_message(message)
            if isinstance(payload, GenerationCompleted) and payload.generation_id == generation_id:
                return payload


def avatar_with_lora(stack: LocalStack, client: httpx.Client, lora: bytes) -> tuple[str, dict[str, str]]:
    """A new owner's avatar with a ready LoRA, and the owner's Authorization header."""
    urls = stack.urls()
    auth = stack.bearer(f"e2e-{uuid.uuid4()}")
    avatar_id = flow.create_avatar(client, urls["identity"], auth, name="e2e avatar")
    flow.register_lora(client, urls["identity"], auth, avatar_id, lora)
    flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
    return avatar_id, auth


async def test_a_generation_travels_the_whole_path(
    stack: LocalStack,
    stack_storage: ObjectStorage,
    completed_events: AbstractQueue,
    generation_messages: AbstractQueue,
    lora_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    content = stack.urls()["content"]

    def drive() -> tuple[flow.Generation, bytes, httpx.Response]:
        with httpx.Client(timeout=30.0) as client:
            avatar_id, auth = avatar_with_lora(stack, client, lora_files["a"].read_bytes())
            accepted = flow.request_generation(client, content, auth, avatar_id, width=64, height=80, steps=2)
            generation = flow.wait_generation(client, content, auth, str(accepted["id"]), timeout=60.0)
            assert generation.image_url is not None, generation.body
            downloaded = flow.download(client, generation.image_url, tmp_path / "image.png")
            unknown = client.post(
                f"{content}/api/v1/content/generate",
                json={"avatar_id": str(uuid.uuid4()), "prompt": "a portrait", "width": 64, "height": 64},
                headers=auth,
            )
        return generation, downloaded, unknown

    generation, downloaded, unknown = await asyncio.to_thread(drive)

    assert generation.status == "completed", generation.body
    event = await completed_event(completed_events, generation.id)
    stored = await stack_storage.get_bytes(event.image.object_key)
    assert image_size(stored) == (64, 80)
    assert hashlib.sha256(stored).hexdigest() == event.image.sha256
    assert downloaded == stored
    assert generation.body["image"]["sha256"] == event.image.sha256
    assert generation.body["timings"]["worker_seconds"] == pytest.approx(event.generation_time_seconds)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["details"]["fields"][0]["field"] == "avatar_id"
    # No OTEL_* variable is set here (as in `make demo`): nothing is exported, and yet every message of the
    # generation carries a traceparent, all with the generation's one trace id.
    trace_ids = await trace_ids_of(generation_messages, generation.id)
    assert set(trace_ids) == {"generation.requested", "generation.started", "generation.completed"}
    assert len(set(trace_ids.values())) == 1


async def test_a_lora_identity_accepts_but_the_worker_cannot_load_ends_failed_with_lora_load_failed(
    stack: LocalStack, lora_files: dict[str, Path]
) -> None:
    content = stack.urls()["content"]
    # Identity checks names, shapes and dtypes from the header; only the worker reads the values.
    poisoned = with_nan(lora_files["a"].read_bytes())

    def drive() -> flow.Generation:
        with httpx.Client(timeout=30.0) as client:
            avatar_id, auth = avatar_with_lora(stack, client, poisoned)
            accepted = flow.request_generation(client, content, auth, avatar_id, width=64, height=64, steps=2)
            return flow.wait_generation(client, content, auth, str(accepted["id"]), timeout=60.0)

    generation = await asyncio.to_thread(drive)

    assert generation.status == "failed", generation.body
    assert generation.error_code == "LORA_LOAD_FAILED"
    assert generation.body["image"] is None


async def test_a_put_to_the_old_upload_url_after_complete_changes_nothing_a_generation_uses(
    stack: LocalStack, stack_storage: ObjectStorage, lora_files: dict[str, Path]
) -> None:
    urls = stack.urls()
    lora_a, lora_b = lora_files["a"].read_bytes(), lora_files["b"].read_bytes()

    def drive() -> tuple[flow.Lora, int, flow.Generation]:
        with httpx.Client(timeout=30.0) as client:
            auth = stack.bearer(f"e2e-{uuid.uuid4()}")
            avatar_id = flow.create_avatar(client, urls["identity"], auth)
            registered = client.post(
                f"{urls['identity']}/api/v1/avatars/{avatar_id}/loras",
                json={"size_bytes": len(lora_a), "base_model": flow.TINY_BASE_MODEL},
                headers=auth,
            ).json()
            assert client.put(registered["upload_url"], content=lora_a).status_code == 200
            done = client.post(f"{urls['identity']}/api/v1/loras/{registered['lora_id']}/complete", headers=auth)
            assert done.status_code == 200, done.text
            late_put = client.put(registered["upload_url"], content=lora_b).status_code
            flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
            accepted = flow.request_generation(client, urls["content"], auth, avatar_id, width=64, height=64, steps=2)
            generation = flow.wait_generation(client, urls["content"], auth, str(accepted["id"]), timeout=60.0)
        lora = flow.Lora(registered["lora_id"], avatar_id, done.json()["object_key"], done.json()["sha256"])
        return lora, late_put, generation

    lora, late_put, generation = await asyncio.to_thread(drive)

    # The store takes the late PUT (a valid URL, the signed length): R2 would too within the URL's lifetime.
    assert late_put == 200
    assert generation.status == "completed", generation.body
    assert lora.object_key == f"loras/sha256/{hashlib.sha256(lora_a).hexdigest()}.safetensors"
    assert await stack_storage.get_bytes(lora.object_key) == lora_a


def sse_events(client: httpx.Client, url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of each event of a Server-Sent Events stream, read until the server ends it."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "" and "data" in fields:
                events.append((fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])))
                fields = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


async def test_prefer_wait_answers_the_finished_image_and_the_signed_event_stream_replays_its_statuses(
    stack: LocalStack, lora_files: dict[str, Path]
) -> None:
    content = stack.urls()["content"]

    def drive() -> tuple[httpx.Response, list[tuple[str, str, dict[str, Any]]]]:
        with httpx.Client(timeout=90.0) as client:
            avatar_id, auth = avatar_with_lora(stack, client, lora_files["a"].read_bytes())
            body = {"avatar_id": avatar_id, "prompt": "a portrait", "width": 64, "height": 64, "steps": 2}
            answer = client.post(f"{content}/api/v1/content/generate", json=body, headers={**auth, "Prefer": "wait=60"})
            # As a browser's EventSource would: the signed link, no Authorization header.
            events = sse_events(client, f"{content}{answer.json()['events_url']}")
        return answer, events

    answer, events = await asyncio.to_thread(drive)

    # One request, no poll loop: the answer waited on the tiny worker until the image was there.
    assert answer.status_code == 202 and answer.headers["Preference-Applied"] == "wait=60", answer.text
    generation = answer.json()
    assert generation["status"] == "completed", generation
    assert (generation["image"]["width"], generation["image"]["height"]) == (64, 64)
    assert generation["timings"]["total_seconds"] >= generation["timings"]["worker_seconds"] > 0
    assert [(event, event_id, data["status"]) for event, event_id, data in events] == [
        ("status", "1", "queued"),
        ("status", "2", "running"),
        ("status", "3", "completed"),
    ]
    assert events[-1][2]["generation"]["image"]["sha256"] == generation["image"]["sha256"]


def test_the_program_the_guide_shows_type_checks_against_the_generated_client_and_runs(
    stack: LocalStack, lora_files: dict[str, Path], tmp_path: Path
) -> None:
    # Content's client generated from the committed document (openapi-python-client), the guide's program checked
    # with mypy --strict against it, then run: submit, wait, list, cancel one, the event stream, each answer parsed
    # into the generated models (a stream documented as a JSON object made the client call from_dict on its text).
    started = time.monotonic()
    generate_client(REPO / "docs" / "openapi" / "content.json", tmp_path)
    (tmp_path / "example.py").write_text(documented_program(REPO / "docs" / "content.md"), encoding="utf-8")
    checked = mypy_strict(tmp_path, "example.py")
    print(f"client generated and the program type-checked in {time.monotonic() - started:.1f} s")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    content = stack.urls()["content"]
    with httpx.Client(timeout=30.0) as client:
        avatar_id, auth = avatar_with_lora(stack, client, lora_files["a"].read_bytes())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONTENT_URL": content,
        "CONTENT_TOKEN": auth["Authorization"].removeprefix("Bearer "),
        "AVATAR_ID": avatar_id,
    }
    ran = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr

    out = ran.stdout
    done = re.search(r"^generated (\S+): completed, seed \d+$", out, re.M)
    canceled = re.search(r"^canceled (\S+): canceled$", out, re.M)
    assert done and canceled, out
    # The owner's list then held the finished generation alone; its stream told each of its statuses, in order.
    assert re.search(rf"^listed {done.group(1)} completed$", out, re.M), out
    assert re.search(rf"^events of {done.group(1)}: queued, running, completed$", out, re.M), out
    with httpx.Client(base_url=content, headers=auth, timeout=30.0) as client:
        assert client.get(f"/api/v1/content/{done.group(1)}").json()["status"] == "completed"
        assert client.get(f"/api/v1/content/{canceled.group(1)}").json()["status"] == "canceled"


def _refusal_status(host: str, port: int, request: bytes) -> int:
    """The status a raw HTTP request gets, read until the server closes the connection."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("service", ["identity", "content", "gateway"])
def test_every_service_as_deployed_refuses_oversized_headers_and_bodies_unauthenticated(
    stack: LocalStack, service: str
) -> None:
    host, port = stack.config.host, stack.config.ports[service]
    header = f"GET /healthz HTTP/1.1\r\nHost: x\r\nx-padding: {'a' * 40_000}\r\n\r\n".encode()
    body = b"POST /healthz HTTP/1.1\r\nHost: x\r\ncontent-length: 104857600\r\n\r\n"
    assert _refusal_status(host, port, header) == 431
    assert _refusal_status(host, port, body) == 413
