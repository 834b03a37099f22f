"""Retries by cause and redirects, with the real gateway, RabbitMQ and S3 and the fault-injecting stand-in worker
(tests/support/gateway/stand_in_worker.py): an expired LoRA URL is retried once, a sha256 mismatch never; the worker's
credentials never follow a redirect to another origin, and a request body is never re-sent to one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import EventPayload, GenerationCompleted, GenerationFailed
from contracts.topology import Topology
from services.common.storage.objects import ObjectStorage
from tests.support.gateway.fakes import requested
from tests.support.gateway.harness import gateway_running, gateway_settings, publish_request, results_until_terminal
from tests.support.gateway.stand_in_worker import StandInWorker

CREDENTIALS = {"modal-key", "modal-secret", "authorization"}
MODAL_AUTH = {"MODAL_API_KEY": "wk-test-key-123", "MODAL_API_TOKEN": "ws-test-secret-456"}


async def run_one(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    endpoint_url: str,
    **env: object,
) -> list[EventPayload]:
    generation_id = str(uuid.uuid4())
    settings = gateway_settings(rabbitmq_url, storage, topo, endpoint_url, **env)
    async with gateway_running(settings):
        await publish_request(amqp, topo, requested(generation_id, now=datetime.now(UTC)))
        return await results_until_terminal(amqp, topo, generation_id, wait=30)


def credential_headers(headers: dict[str, str]) -> set[str]:
    return {name.lower() for name in headers} & CREDENTIALS


async def test_an_expired_lora_url_is_retried_once_and_then_succeeds(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    worker = StandInWorker("lora-url-expired-then-ok").start()
    try:
        events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, GATEWAY_MAX_ATTEMPTS=5)
    finally:
        worker.stop()

    completed = events[-1]
    assert isinstance(completed, GenerationCompleted) and completed.attempts == 2
    assert worker.calls == 2 and all(body["lora_url"] for body in worker.bodies)


async def test_an_expired_lora_url_refused_twice_is_not_tried_a_third_time(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    worker = StandInWorker("lora-url-expired").start()
    try:
        events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, GATEWAY_MAX_ATTEMPTS=5)
    finally:
        worker.stop()

    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert worker.calls == 2
    assert (failed.error_code, failed.attempts, failed.retryable) == ("LORA_DOWNLOAD_FAILED", 2, False)
    assert [c["cause"] for c in failed.details["causes"]] == ["lora_url_refused"] * 2  # type: ignore[index]


async def test_a_sha256_mismatch_is_never_retried(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    worker = StandInWorker("lora-sha-mismatch").start()
    try:
        events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, GATEWAY_MAX_ATTEMPTS=5)
    finally:
        worker.stop()

    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert worker.calls == 1
    assert (failed.error_code, failed.attempts, failed.retryable) == ("LORA_DOWNLOAD_FAILED", 1, False)
    assert failed.details["reason"] == "sha256_mismatch" and failed.details["stopped_by"] == "not_retryable"


@pytest.mark.parametrize("auth", [MODAL_AUTH, {"MODAL_API_KEY": "bearer-test-token-789"}], ids=["modal", "bearer"])
async def test_credentials_are_not_sent_on_a_redirect_to_another_origin(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    auth: dict[str, str],
) -> None:
    elsewhere = StandInWorker("ok").start()
    worker = StandInWorker("redirect-303", redirect_to=elsewhere.url.replace("/generate", "/result")).start()
    try:
        events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, **auth)
    finally:
        worker.stop()
        elsewhere.stop()

    assert isinstance(events[-1], GenerationCompleted)
    [(method, path, sent_to_worker)] = worker.requests
    assert (method, path) == ("POST", "/generate") and credential_headers(sent_to_worker)
    [(method, path, sent_elsewhere)] = elsewhere.requests
    assert (method, path) == ("GET", "/result")
    assert credential_headers(sent_elsewhere) == set()
    assert not any(secret in " ".join(sent_elsewhere.values()) for secret in auth.values())


async def test_credentials_follow_a_redirect_within_the_same_origin(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    # Modal answers a long web call with a 303 to its own result URL: the credentials must go along.
    worker = StandInWorker("redirect-303").start()
    try:
        events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, **MODAL_AUTH)
    finally:
        worker.stop()

    assert isinstance(events[-1], GenerationCompleted)
    assert [(m, p) for m, p, _ in worker.requests] == [("POST", "/generate"), ("GET", "/result")]
    assert credential_headers(worker.requests[1][2]) == {"modal-key", "modal-secret"}


async def test_a_body_is_not_re_sent_to_another_origin(
    amqp: AbstractRobustConnection, topo: Topology, storage: ObjectStorage, rabbitmq_url: str
) -> None:
    # A 307 keeps the method and the body, and the body carries the presigned LoRA URL.
    elsewhere = StandInWorker("ok").start()
    worker = StandInWorker("redirect-307", redirect_to=elsewhere.url).start()
    try:
        events = await run_one(amqp, topo, storage, rabbitmq_url, worker.url, **MODAL_AUTH)
    finally:
        worker.stop()
        elsewhere.stop()

    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert (failed.error_code, failed.attempts) == ("INVALID_WORKER_RESPONSE", 1)
    assert elsewhere.requests == []
