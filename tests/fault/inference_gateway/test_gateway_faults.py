"""Gateway failure paths with real RabbitMQ and S3: no worker, a worker answering garbage, a passed deadline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import EventPayload, GenerationFailed, GenerationStarted
from contracts.topology import Topology
from scripts.stacklib.processes import free_port
from services.common.storage.objects import ObjectStorage, StorageConfig
from tests.support.gateway.fakes import requested
from tests.support.gateway.harness import gateway_running, gateway_settings, publish_request, results_until_terminal
from tests.support.gateway.stand_in_worker import StandInWorker


async def run_one(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    endpoint_url: str,
    deadline_in: timedelta = timedelta(minutes=2),
    **env: object,
) -> tuple[str, list[EventPayload]]:
    generation_id = str(uuid.uuid4())
    request = requested(generation_id, now=datetime.now(UTC), deadline_in=deadline_in)
    settings = gateway_settings(rabbitmq_url, storage, topo, endpoint_url, **env)
    async with gateway_running(settings):
        await publish_request(amqp, topo, request)
        events = await results_until_terminal(amqp, topo, generation_id, wait=30)
    return generation_id, events


async def test_no_worker_listening_fails_with_worker_unavailable_once_its_retry_window_closes(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/generate"

    _, events = await run_one(
        amqp, topo, storage, rabbitmq_url, nowhere, GATEWAY_MAX_ATTEMPTS=3, GATEWAY_WORKER_RETRY_SECONDS=2
    )

    started = [e.attempt for e in events if isinstance(e, GenerationStarted)]
    # Three attempts, then more past the limit while the worker has been unreachable for less than 2 s.
    assert len(started) >= 4 and started == list(range(1, len(started) + 1))
    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert (failed.error_code, failed.attempts, failed.retryable) == ("WORKER_UNAVAILABLE", len(started), True)
    assert failed.details["reason"] == "ConnectError"
    assert failed.details["stopped_by"] == "worker_retry_window"


async def test_an_expired_deadline_fails_with_timeout_without_calling_the_worker(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    worker = StandInWorker("ok").start()
    try:
        _, events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, deadline_in=timedelta(seconds=-1))
    finally:
        worker.stop()

    assert worker.calls == 0
    assert [type(e).__name__ for e in events] == ["GenerationFailed"]
    failed = events[0]
    assert isinstance(failed, GenerationFailed) and failed.error_code == "TIMEOUT"


@pytest.mark.parametrize("fault", ["garbage-body", "wrong-size-png", "not-a-png"])
async def test_a_worker_answering_garbage_fails_with_invalid_worker_response_once(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str, fault: str
) -> None:
    worker = StandInWorker(fault).start()
    try:
        generation_id, events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url)
    finally:
        worker.stop()

    assert worker.calls == 1
    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert (failed.error_code, failed.attempts, failed.retryable) == ("INVALID_WORKER_RESPONSE", 1, False)
    assert not await storage.exists(f"generations/{generation_id}.png")


@pytest.mark.parametrize(("fault", "code"), [("html-502", "WORKER_UNAVAILABLE"), ("contract-cuda-oom", "CUDA_OOM")])
async def test_transient_worker_failures_are_retried_up_to_the_limit(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str, fault: str, code: str
) -> None:
    worker = StandInWorker(fault).start()
    try:
        _, events = await run_one(
            amqp, topo, storage, rabbitmq_url, worker.url, GATEWAY_MAX_ATTEMPTS=2, GATEWAY_WORKER_RETRY_SECONDS=0
        )
    finally:
        worker.stop()

    assert worker.calls == 2
    failed = events[-1]
    assert isinstance(failed, GenerationFailed) and (failed.error_code, failed.attempts) == (code, 2)


async def test_each_attempt_gets_a_presigned_lora_url_that_never_reaches_an_event(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    worker = StandInWorker("html-502").start()
    try:
        _, events = await run_one(
            amqp, topo, storage, rabbitmq_url, worker.url, GATEWAY_MAX_ATTEMPTS=2, GATEWAY_WORKER_RETRY_SECONDS=0
        )
    finally:
        worker.stop()

    urls = [str(body["lora_url"]) for body in worker.bodies]
    assert len(urls) == 2 and all("X-Amz-Signature=" in url for url in urls)
    assert all(body["request_id"] == worker.bodies[0]["request_id"] for body in worker.bodies)
    for event in events:
        assert "X-Amz" not in event.model_dump_json()


async def test_storage_down_fails_with_storage_failed(
    amqp: AbstractRobustConnection, topo: Topology, rabbitmq_url: str
) -> None:
    dead = ObjectStorage(
        StorageConfig(
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            access_key_id="test-access-key",
            secret_access_key="test-secret-key",
            bucket="vb-nowhere",
            region="us-east-1",
        )
    )
    worker = StandInWorker("ok").start()
    try:
        generation_id = str(uuid.uuid4())
        request = requested(generation_id, now=datetime.now(UTC), lora_key=None)
        settings = gateway_settings(
            rabbitmq_url, dead, topo, worker.url, GATEWAY_MAX_ATTEMPTS=2, GATEWAY_UPLOAD_RETRY_SECONDS=2
        )
        async with gateway_running(settings):
            await publish_request(amqp, topo, request)
            events = await results_until_terminal(amqp, topo, generation_id, wait=60)
    finally:
        worker.stop()

    assert worker.calls == 1  # the image is kept; only the upload is retried
    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert (failed.error_code, failed.retryable) == ("STORAGE_FAILED", True)
    # Past the two attempts, the upload alone went on for the upload window (2 s here), then stopped.
    assert failed.attempts > 2 and failed.details["stopped_by"] == "upload_retry_window"
