"""Duplicated and redelivered generation.requested with the real tiny worker, RabbitMQ and S3: one worker run per
generation, one result each, and a request that comes again after its result re-announces it without the GPU."""

from __future__ import annotations

from pathlib import Path

import httpx
from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationCompleted, GenerationStarted
from contracts.topology import SERVICE_CONTENT, Topology, event_source
from services.common.messaging.broker import Publisher
from services.common.messaging.events import new_event
from services.common.storage.objects import ObjectStorage
from tests.integration.inference_gateway.test_gateway_with_worker import request_for, upload_lora
from tests.support.gateway.harness import ResultLog, gateway_running, gateway_settings, publish_request
from tests.support.prometheus import wait_for_metric


def served(worker_url: str) -> int:
    """Generations the worker has run so far (its /healthz counter)."""
    health = httpx.get(worker_url.replace("/generate", "/healthz"), timeout=10).json()
    return int(health["requests_served"])


async def test_a_duplicated_a_redelivered_and_a_late_request_make_one_worker_run_each(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    worker_url: str,
    lora_files: dict[str, Path],
) -> None:
    sha = await upload_lora(storage, lora_files["a"].read_bytes())
    (duplicated_id, duplicated), (redelivered_id, redelivered) = request_for(sha), request_for(sha)
    settings = gateway_settings(rabbitmq_url, storage, topo, worker_url)
    results = ResultLog(amqp, topo)
    before = served(worker_url)

    async with gateway_running(settings) as gateway:
        # Duplicated: the same request published twice (two events, two ids), as a relay that crashed between the
        # broker's confirm and its own commit would.
        await publish_request(amqp, topo, duplicated)
        await publish_request(amqp, topo, duplicated)
        # Redelivered: the very same message twice (same event id), as the broker redelivers an unacked one.
        publisher = await Publisher.open(amqp, topo.events_exchange)
        try:
            event = new_event(
                redelivered,
                source=event_source(SERVICE_CONTENT),
                subject=redelivered_id,
                correlation_id=redelivered_id,
            )
            await publisher.publish_event(event)
            await publisher.publish_event(event)
        finally:
            await publisher.close()
        first = await results.until(duplicated_id, GenerationCompleted)
        await results.until(redelivered_id, GenerationCompleted)
        await wait_for_metric(gateway, "vixen_gateway_jobs_recorded_total", 2, outcome="already_pending")
        runs_for_two = served(worker_url) - before
        # Late: the request once more, after its result: the result is announced again, the worker not called.
        await publish_request(amqp, topo, duplicated)
        await wait_for_metric(gateway, "vixen_gateway_jobs_recorded_total", 1, outcome="reannounced")
        again = await results.until(duplicated_id, GenerationCompleted, count=2)

    assert runs_for_two == 2 and served(worker_url) - before == 2
    assert again == first
    for generation_id in (duplicated_id, redelivered_id):
        kinds = [type(e) for e in results.events[generation_id]]
        assert kinds.count(GenerationStarted) == 1
    assert [type(e) for e in results.events[redelivered_id]].count(GenerationCompleted) == 1
