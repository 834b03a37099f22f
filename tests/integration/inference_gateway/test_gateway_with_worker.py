"""The gateway end to end with the real tiny worker, real RabbitMQ and a real (SeaweedFS) S3 endpoint."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationCompleted, GenerationFailed, GenerationRequested, GenerationStarted
from contracts.object_keys import lora_object_key
from contracts.topology import Topology
from services.common.storage.objects import ObjectStorage
from tests.support.gateway.fakes import image_size, requested
from tests.support.gateway.harness import gateway_running, gateway_settings, publish_request, results_until_terminal
from tests.support.prometheus import metric_value


async def upload_lora(storage: ObjectStorage, data: bytes) -> str:
    """Put the file where identity puts a ready LoRA (its content address); its sha256."""
    sha256 = hashlib.sha256(data).hexdigest()
    await storage.put_bytes(lora_object_key(sha256), data)
    return sha256


def request_for(lora_sha256: str, width: int = 64, height: int = 64) -> tuple[str, GenerationRequested]:
    generation_id = str(uuid.uuid4())
    request = requested(generation_id, lora_key=lora_object_key(lora_sha256), width=width, height=height, steps=2)
    assert request.lora is not None
    lora = request.lora.model_copy(update={"sha256": lora_sha256})
    return generation_id, request.model_copy(update={"lora": lora})


async def test_a_request_yields_started_then_completed_with_the_stored_png(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    worker_url: str,
    lora_files: dict[str, Path],
) -> None:
    sha = await upload_lora(storage, lora_files["a"].read_bytes())
    generation_id, request = request_for(sha, width=64, height=96)
    settings = gateway_settings(rabbitmq_url, storage, topo, worker_url)

    async with gateway_running(settings) as gateway:
        ready = await gateway.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "consumers": "ok"}}
        await publish_request(amqp, topo, request)
        events = await results_until_terminal(amqp, topo, generation_id)
        metrics = (await gateway.get("/metrics")).text

    assert [type(e).__name__ for e in events] == ["GenerationStarted", "GenerationCompleted"]
    started, completed = events
    assert isinstance(started, GenerationStarted) and started.attempt == 1 and started.worker_mode == "sync"
    assert isinstance(completed, GenerationCompleted)
    stored = await storage.get_bytes(completed.image.object_key)
    assert completed.image.object_key == f"generations/{generation_id}.png"
    assert hashlib.sha256(stored).hexdigest() == completed.image.sha256
    assert image_size(stored) == (64, 96)
    assert (completed.image.width, completed.image.height, completed.image.size_bytes) == (64, 96, len(stored))
    info = await storage.head(completed.image.object_key)
    assert info.content_type == "image/png"
    assert completed.model_info.lora_applied and completed.model_info.base_model == "tiny-sdxl-random"
    assert completed.timings is not None and completed.timings.lora_source in ("download", "memory_cache")
    assert completed.attempts == 1
    assert metric_value(metrics, "vixen_gateway_generations_completed_total") == 1
    assert metric_value(metrics, "vixen_gateway_worker_call_seconds_count", outcome="ok") == 1
    assert metric_value(metrics, "vixen_gateway_lora_loads_total", source=completed.timings.lora_source) == 1
    assert metric_value(metrics, "vixen_gateway_queue_wait_seconds_count") == 1
    assert metric_value(metrics, "vixen_gateway_worker_calls_in_flight") == 0


async def test_a_lora_object_that_is_not_a_lora_fails_once_with_lora_load_failed(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    worker_url: str,
) -> None:
    sha = await upload_lora(storage, b"this is a text file, not a safetensors LoRA\n" * 10)
    generation_id, request = request_for(sha)
    settings = gateway_settings(rabbitmq_url, storage, topo, worker_url, GATEWAY_MAX_ATTEMPTS=3)

    async with gateway_running(settings):
        await publish_request(amqp, topo, request)
        events = await results_until_terminal(amqp, topo, generation_id)

    assert [type(e).__name__ for e in events] == ["GenerationStarted", "GenerationFailed"]
    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert (failed.error_code, failed.attempts, failed.retryable) == ("LORA_LOAD_FAILED", 1, False)
    assert not await storage.exists(f"generations/{generation_id}.png")


async def test_async_mode_submits_and_polls_the_real_worker(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    worker_url: str,
    lora_files: dict[str, Path],
) -> None:
    sha = await upload_lora(storage, lora_files["b"].read_bytes())
    generation_id, request = request_for(sha)
    # MODAL_SUBMIT_URL / MODAL_RESULT_URL are derived from the local worker's /generate: /jobs, /jobs/{call_id}.
    settings = gateway_settings(rabbitmq_url, storage, topo, worker_url, MODAL_MODE="async", MODAL_POLL_SECONDS=0.1)

    async with gateway_running(settings):
        await publish_request(amqp, topo, request)
        events = await results_until_terminal(amqp, topo, generation_id)

    started, completed = events
    assert isinstance(started, GenerationStarted) and started.worker_mode == "async"
    assert isinstance(completed, GenerationCompleted)
    stored = await storage.get_bytes(completed.image.object_key)
    assert hashlib.sha256(stored).hexdigest() == completed.image.sha256
    assert image_size(stored) == (64, 64)
