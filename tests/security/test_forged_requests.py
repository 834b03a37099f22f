"""Forged generation.requested against the real gateway (real RabbitMQ and S3): with content's `source`, a request
naming an object that is not a ready LoRA's content address, or an id content never issues, is dead-lettered as
forged; one over the deployment's cost budget fails with INVALID_REQUEST. The worker is never called for either.

The worker URL points at a closed port: any call the gateway made would show as a WORKER_UNAVAILABLE attempt (a
generation.started, a worker call in its metrics) instead of nothing at all."""

from __future__ import annotations

import socket
import uuid

from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationFailed, GenerationRequested
from contracts.object_keys import generation_image_key, lora_object_key
from contracts.topology import GATEWAY_GENERATION_REQUESTED, Topology
from services.common.messaging.consumer import DEATH_REASON_HEADER, DeathReason
from services.common.storage.objects import ObjectStorage
from tests.integration.common.amqp_reading import next_message
from tests.support.gateway.fakes import LORA_SHA, requested
from tests.support.gateway.harness import gateway_running, gateway_settings, publish_request, results_until_terminal
from tests.support.prometheus import metric_value


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/generate"


def pointing_at(key: str, sha256: str = LORA_SHA, generation_id: str | None = None) -> GenerationRequested:
    request = requested(generation_id or str(uuid.uuid4()))
    assert request.lora is not None
    return request.model_copy(update={"lora": request.lora.model_copy(update={"object_key": key, "sha256": sha256})})


async def test_requests_naming_other_objects_are_dead_lettered_and_a_costly_one_fails_unrun(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    other_generation = str(uuid.uuid4())
    forged = [
        pointing_at(f"uploads/loras/{uuid.uuid4()}/{uuid.uuid4()}.safetensors"),  # an unverified upload
        pointing_at(generation_image_key(other_generation)),  # another tenant's image
        pointing_at(lora_object_key("cd" * 32)),  # another file's address, not this sha256's
        pointing_at(lora_object_key(LORA_SHA), generation_id="../../loras/x"),  # an id content never issues
    ]
    costly = requested(str(uuid.uuid4()), width=2048, height=2048, steps=100)
    settings = gateway_settings(rabbitmq_url, storage, topo, closed_port_url(), GATEWAY_WORKER_RETRY_SECONDS=0)

    async with gateway_running(settings) as gateway:
        for request in forged:
            await publish_request(amqp, topo, request)
            dead = await next_message(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).dlq_name)
            assert (dead.headers or {}).get(DEATH_REASON_HEADER) == DeathReason.FORGED_FIELD.value
        await publish_request(amqp, topo, costly)
        events = await results_until_terminal(amqp, topo, costly.generation_id)
        metrics = (await gateway.get("/metrics")).text

    [failed] = events  # no generation.started: no attempt was made
    assert isinstance(failed, GenerationFailed) and failed.error_code == "INVALID_REQUEST"
    assert failed.details["worker_called"] is False and set(failed.details["fields"]) == {"width", "height", "steps"}
    assert not metric_value(metrics, "vixen_gateway_worker_calls_total")
    assert not await storage.exists(generation_image_key(costly.generation_id))
