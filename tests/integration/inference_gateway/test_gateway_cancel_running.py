"""generation.canceled for a generation the gateway is running, with the real tiny worker, RabbitMQ and S3:
the worker stops it and is free for the next generation at once; nothing is published for the canceled one."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationCanceled, GenerationCompleted, GenerationStarted
from contracts.topology import Topology
from services.common.storage.objects import ObjectStorage
from tests.support.gateway.harness import (
    ResultLog,
    gateway_running,
    gateway_settings,
    lora_request,
    publish_cancel,
    publish_request,
)
from tests.support.prometheus import metric_value, wait_for_metric

LONG_STEPS = 100  # the contract's maximum
SHORT_STEPS = 10


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_canceling_a_running_generation_stops_it_on_the_worker_and_frees_the_worker(
    mode: str,
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    worker_url: str,
    lora_files: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = lora_files["a"].read_bytes()
    long = await lora_request(storage, data, steps=LONG_STEPS)
    short = await lora_request(storage, data, steps=SHORT_STEPS)
    cancel = GenerationCanceled(
        generation_id=long.generation_id, owner_id="owner-1", avatar_id="avatar-1", canceled_at=datetime.now(UTC)
    )
    # Two requests at once in the gateway: the short one waits for nothing but the worker.
    settings = gateway_settings(
        rabbitmq_url, storage, topo, worker_url, MODAL_MODE=mode, MODAL_POLL_SECONDS=0.05, GATEWAY_CONCURRENCY=2
    )
    results = ResultLog(amqp, topo)
    loop = asyncio.get_running_loop()

    with caplog.at_level(logging.INFO, logger="services.inference_gateway"):
        async with gateway_running(settings) as gateway:
            await publish_request(amqp, topo, long)
            # Published just before the worker call: the long generation is on its way to the worker.
            await results.until(long.generation_id, GenerationStarted)
            canceled_at = loop.time()
            await publish_cancel(amqp, topo, cancel)
            await wait_for_metric(gateway, "vixen_gateway_running_canceled_total", 1)
            await publish_request(amqp, topo, short)
            completed = await results.until(short.generation_id, GenerationCompleted)
            done_at = loop.time()
            metrics = (await gateway.get("/metrics")).text

    assert isinstance(completed, GenerationCompleted) and completed.timings is not None
    # The short one's own denoising gives the step time on this machine: had the long one kept the worker, the
    # short one would have waited for most of its 100 steps.
    step_seconds = completed.timings.denoise_ms / 1000 / SHORT_STEPS
    assert done_at - canceled_at < LONG_STEPS * step_seconds / 2, (done_at - canceled_at, step_seconds)
    # Nothing but the started event for the canceled generation: no completed, no failed.
    assert [type(e).__name__ for e in results.events[long.generation_id]] == ["GenerationStarted"]
    assert not await storage.exists(f"generations/{long.generation_id}.png")
    assert metric_value(metrics, "vixen_gateway_generations_completed_total") == 1
    assert metric_value(metrics, "vixen_gateway_generations_failed_total") is None
    if mode == "async":
        # The job was canceled on the worker: 202 while it ran (or 200 if it had not started yet).
        cancels = [r.getMessage() for r in caplog.records if "cancel on the worker" in r.getMessage()]
        assert len(cancels) == 1 and cancels[0].endswith(("HTTP 202", "HTTP 200")), cancels
