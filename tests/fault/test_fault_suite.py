"""The fault suite: a batch of generations on the real stack (PostgreSQL, RabbitMQ, local S3, the tiny worker)
while one thing breaks at a time; after each, every accepted generation ended exactly once, as completed or failed
with a documented code, with at most one image made, and the stack is whole again (tests/support/stack/fault_stack.py
says what is checked). The table of every scenario is printed at the end of the run (tests/fault/conftest.py).

The scenarios run in order on one stack (starting it takes half a minute); each leaves it as it found it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration import conftest as integration
from tests.support.stack.fault_stack import (
    FaultStack,
    Row,
    avatar_with_lora,
    conclude,
    every_event_twice,
    fault_stack,
    read_all,
    submit,
    wait_for_run,
)
from tests.support.stack.tcp_proxy import TcpProxy

# Over pyproject's 300 s per test: a scenario's fault and its settling must fit, so that a stuck generation fails
# with its report and the services' logs rather than with pytest-timeout's traceback.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

# Found by name: real RabbitMQ and PostgreSQL, as the integration and e2e suites use them.
_containers = integration._containers
_docker = integration._docker
pg_admin_url = integration.pg_admin_url
rabbitmq_url = integration.rabbitmq_url

BATCH = 4
OUTAGE_SECONDS = 30.0


def rabbitmqctl(command: str) -> None:
    subprocess.run(["rabbitmqctl", command], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def fs(
    rabbitmq_url: str,
    pg_admin_url: str,
    tiny_model_dir: Path,
    lora_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    fault_rows: list[Row],
) -> Iterator[FaultStack]:
    """The stack behind its proxies, with one owner and a ready avatar; its rows join the run's fault table."""
    with fault_stack(rabbitmq_url, pg_admin_url, tiny_model_dir, tmp_path_factory.mktemp("fault-stack")) as stack:
        stack.auth = stack.stack.bearer(f"fault-{uuid.uuid4()}")
        stack.avatar_id = avatar_with_lora(stack.stack, stack.auth, lora_files["a"].read_bytes())
        try:
            yield stack
        finally:
            fault_rows.extend(stack.rows)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        yield http


async def test_broker_connections_cut(fs: FaultStack, client: httpx.AsyncClient) -> None:
    ids = await submit(client, fs, BATCH)
    await wait_for_run(fs.stack, ids)
    fs.proxies.broker.down()  # every service's AMQP connection cut, reconnects refused …
    await asyncio.sleep(5.0)
    fs.proxies.broker.up()  # … for 5 s
    await conclude(client, fs, "broker connections cut for 5s", ids, since=time.monotonic())
    assert fs.proxies.broker.cut >= 3


async def test_broker_stalled(fs: FaultStack, client: httpx.AsyncClient) -> None:
    ids = await submit(client, fs, BATCH)
    await wait_for_run(fs.stack, ids)
    fs.proxies.broker.stall()  # connections stay open, nothing passes either way
    await asyncio.sleep(10.0)
    fs.proxies.broker.resume()
    await conclude(client, fs, "broker stalled for 10s", ids, since=time.monotonic())


async def test_broker_restarted(fs: FaultStack, client: httpx.AsyncClient) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here: the broker cannot be restarted by this test")
    ids = await submit(client, fs, BATCH)
    await wait_for_run(fs.stack, ids)
    # The broker application stops and starts again (the node stays up): every connection closes, quorum queues and
    # their messages survive.
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await asyncio.sleep(3.0)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
    await conclude(client, fs, "broker restarted", ids, since=time.monotonic())


@pytest.mark.parametrize("service", ["gateway", "worker", "content"])
async def test_a_service_killed_mid_batch_and_restarted(
    fs: FaultStack, client: httpx.AsyncClient, service: str
) -> None:
    ids = await submit(client, fs, BATCH)
    await wait_for_run(fs.stack, ids)
    fs.stack.kill(service)
    started = time.monotonic()
    await asyncio.to_thread(fs.stack.restart, service)
    down_for = time.monotonic() - started
    row = await conclude(client, fs, f"{service} SIGKILL, {down_for:.0f}s down", ids, since=time.monotonic())
    if service == "worker":
        # A worker restart shorter than the gateway's worker retry window (60 s) fails no generation.
        assert down_for < 60 and row.completed == BATCH, row


async def test_contents_relay_dies_between_commit_and_publish(fs: FaultStack, client: httpx.AsyncClient) -> None:
    # With the broker unreachable the requests are committed with their outbox rows but cannot be published; then
    # content dies. The restarted content's relay publishes them: nothing was lost between commit and publish.
    fs.proxies.broker.down()
    try:
        ids = await submit(client, fs, BATCH)
        fs.stack.kill("content")
    finally:
        fs.proxies.broker.up()
    await asyncio.to_thread(fs.stack.restart, "content")
    row = await conclude(client, fs, "content relay killed before publishing", ids, since=time.monotonic())
    assert row.completed == BATCH, row


WORKER_FAULTS = {
    # name: (start the fault on the worker's proxy, end it, seconds)
    "answers 503": (lambda proxy: proxy.answer(503), TcpProxy.up, 5.0),
    "hangs": (TcpProxy.stall, TcpProxy.resume, 10.0),
    "resets connections": (TcpProxy.down, TcpProxy.up, 5.0),
}


@pytest.mark.parametrize("fault", list(WORKER_FAULTS))
async def test_the_worker_misbehaves(fs: FaultStack, client: httpx.AsyncClient, fault: str) -> None:
    begin, end, seconds = WORKER_FAULTS[fault]
    proxy = fs.proxies.worker
    hits_before = proxy.answered + proxy.cut + proxy.refused
    ids = await submit(client, fs, BATCH)
    await wait_for_run(fs.stack, ids)
    begin(fs.proxies.worker)
    await asyncio.sleep(seconds)
    end(fs.proxies.worker)
    row = await conclude(client, fs, f"worker {fault} for {seconds:.0f}s", ids, since=time.monotonic())
    # Within the gateway's worker retry window: every generation completes, each image made once.
    assert row.completed == BATCH, row
    if fault != "hangs":  # a stall neither answers nor cuts: the others must have met the gateway's calls
        assert proxy.answered + proxy.cut + proxy.refused > hits_before


async def test_every_event_delivered_twice(fs: FaultStack, client: httpx.AsyncClient) -> None:
    async with every_event_twice(fs) as copies:
        ids = await submit(client, fs, BATCH)
        row = await conclude(client, fs, "every event delivered twice", ids, since=time.monotonic())
    assert row.completed == BATCH, row
    # Each request, each start and each result was delivered a second time.
    assert copies["generation.requested"] >= BATCH and copies["generation.completed"] >= BATCH, copies


async def test_postgresql_refuses_connections(fs: FaultStack, client: httpx.AsyncClient) -> None:
    ids = await submit(client, fs, BATCH)  # their results reach content while its database is down
    before = await read_all(client, fs, ids)
    fs.proxies.content_db.down()
    refused: list[httpx.Response] = []
    try:
        ends = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < ends:
            body = {"avatar_id": fs.avatar_id, "prompt": "during the outage", "width": 64, "height": 64, "steps": 2}
            refused.append(await client.post(f"{fs.content}/api/v1/content/generate", json=body, headers=fs.auth))
            await asyncio.sleep(3.0)
    finally:
        fs.proxies.content_db.up()
    row = await conclude(client, fs, f"content's PostgreSQL refuses {OUTAGE_SECONDS:.0f}s", ids, since=time.monotonic())
    assert row.completed == BATCH, row
    # Every submit during the outage: 503 with Retry-After, and nothing of it written (the owner's list holds
    # exactly the generations accepted before and after).
    assert refused and all(r.status_code == 503 and int(r.headers["Retry-After"]) > 0 for r in refused), [
        (r.status_code, r.text[:200]) for r in refused
    ]
    assert {r.json()["error_code"] for r in refused} == {"SERVICE_UNAVAILABLE"}
    listed = await every_generation(client, fs)
    assert "during the outage" not in [item["params"]["prompt"] for item in listed]
    # Every generation of the owner is one a scenario accepted and saw completed: no half-written one.
    assert {item["id"] for item in listed} == fs.completed_ids
    assert all(g is not None for g in before.values())


async def every_generation(client: httpx.AsyncClient, fs: FaultStack) -> list[dict[str, Any]]:
    """The owner's generations, every page."""
    items: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"limit": 50}
    while True:
        page = await client.get(f"{fs.content}/api/v1/content", params=params, headers=fs.auth)
        assert page.status_code == 200, page.text
        body = page.json()
        items.extend(body["items"])
        if not body["next_cursor"]:
            return items
        params["cursor"] = body["next_cursor"]


async def test_the_s3_endpoint_is_down(fs: FaultStack, client: httpx.AsyncClient) -> None:
    # Down before the batch: every generation meets the outage. The worker holds avatar a's LoRA already, so it
    # only fails to store the image: the image is kept and its upload retried (GATEWAY_UPLOAD_RETRY_SECONDS, 120 s).
    fs.proxies.s3.down()
    started = time.monotonic()
    try:
        ids = await submit(client, fs, BATCH)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
    finally:
        fs.proxies.s3.up()
    row = await conclude(client, fs, f"S3 down {OUTAGE_SECONDS:.0f}s", ids, since=time.monotonic(), within=180.0)
    assert row.completed == BATCH and fs.proxies.s3.refused > 0, row
