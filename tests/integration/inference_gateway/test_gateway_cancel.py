"""generation.canceled with the real gateway, real RabbitMQ and S3: a canceled request never reaches the worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationCanceled
from contracts.topology import CONTENT_GENERATION_RESULTS, Topology
from services.common.storage.objects import ObjectStorage
from tests.support.gateway.fakes import requested
from tests.support.gateway.harness import gateway_running, gateway_settings, publish_cancel, publish_request
from tests.support.gateway.stand_in_worker import StandInWorker
from tests.support.prometheus import metric_value, wait_for_metric
from tests.support.queues import drain_events


async def test_a_request_canceled_before_it_started_is_not_run_while_another_still_is(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    canceled_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    cancel = GenerationCanceled(generation_id=canceled_id, owner_id="owner-1", avatar_id="avatar-1", canceled_at=now)
    worker = StandInWorker("ok").start()
    try:
        settings = gateway_settings(rabbitmq_url, storage, topo, worker.url)
        async with gateway_running(settings) as gateway:
            ready = await gateway.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["consumers"] == "ok", ready.text
            await publish_cancel(amqp, topo, cancel)
            # The cancel comes on its own queue: wait until the gateway recorded it, then send both requests.
            await wait_for_metric(gateway, "vixen_gateway_cancels_total", 1)
            await publish_request(amqp, topo, requested(canceled_id, now=now))
            await publish_request(amqp, topo, requested(other_id, now=now))
            # One request at a time (prefetch 1), in order: once the other's two events are in, the canceled
            # one was handled too, and anything it had published would be on the results queue.
            results = await drain_events(amqp, topo.queue(CONTENT_GENERATION_RESULTS).name, expect=2, grace=0.5)
            metrics = (await gateway.get("/metrics")).text
    finally:
        worker.stop()

    assert [(type(p).__name__, getattr(p, "generation_id", None)) for _, p in results] == [
        ("GenerationStarted", other_id),
        ("GenerationCompleted", other_id),
    ]
    assert [body["request_id"] for body in worker.bodies] == [other_id]
    assert not await storage.exists(f"generations/{canceled_id}.png")
    # The canceled one never became a job to run: its request found the cancel recorded in the job table.
    assert metric_value(metrics, "vixen_gateway_jobs_recorded_total", outcome="canceled") == 1
    assert metric_value(metrics, "vixen_gateway_jobs_recorded_total", outcome="queued") == 1
    assert metric_value(metrics, "vixen_gateway_requests_total") == 1
