"""An image upload the store refuses (a gateway with a wrong R2 key), against the real S3 endpoint, which checks
signatures: a clear STORAGE_FAILED at once, with the store's status and code, never retried for the outage window
(docs/gateway.md § Storage outages), and no secret in any log line.

The generation carries no LoRA and the worker is the stand-in (tests/support/gateway/stand_in_worker.py), so the upload
is
the only request signed with the wrong key: a LoRA URL signed with it would be refused first, at the worker's
download (LORA_DOWNLOAD_FAILED, 403).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from datetime import UTC, datetime

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import GenerationFailed
from contracts.object_keys import generation_image_key
from contracts.topology import Topology
from services.common.storage.objects import ObjectStorage, StorageConfig
from tests.support.gateway.fakes import requested
from tests.support.gateway.harness import gateway_running, gateway_settings, publish_request, results_until_terminal
from tests.support.gateway.stand_in_worker import StandInWorker


@pytest.mark.parametrize(
    ("wrong", "s3_code"), [("secret", "SignatureDoesNotMatch"), ("access_key_id", "InvalidAccessKeyId")]
)
async def test_an_upload_refused_for_a_wrong_key_fails_at_once_with_the_store_code_and_no_secret_logged(
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    caplog: pytest.LogCaptureFixture,
    wrong: str,
    s3_code: str,
) -> None:
    right = storage.config
    secret = f"wrong-secret-{secrets.token_urlsafe(24)}"
    key_id = f"WRONGKEY{secrets.token_hex(6).upper()}" if wrong == "access_key_id" else right.access_key_id
    miskeyed = ObjectStorage(StorageConfig(right.endpoint_url, key_id, secret, right.bucket, right.region))
    worker = StandInWorker("ok").start()
    generation_id = str(uuid.uuid4())
    # The deployed upload window (GATEWAY_UPLOAD_RETRY_SECONDS, 120): a refusal must not wait it out.
    settings = gateway_settings(rabbitmq_url, miskeyed, topo, worker.url, GATEWAY_MAX_ATTEMPTS=3)
    try:
        with caplog.at_level(logging.DEBUG):
            async with gateway_running(settings):
                started = time.monotonic()
                await publish_request(amqp, topo, requested(generation_id, now=datetime.now(UTC), lora_key=None))
                events = await results_until_terminal(amqp, topo, generation_id, wait=30)
                seconds = time.monotonic() - started
    finally:
        worker.stop()

    failed = events[-1]
    assert isinstance(failed, GenerationFailed), events
    key = generation_image_key(generation_id)
    # Failed at once: one GPU run, one upload, no retry (a wrong key stays wrong however often it is tried).
    assert (failed.error_code, failed.retryable, failed.attempts) == ("STORAGE_FAILED", False, 1)
    assert failed.details == {
        "object_key": key,
        "reason": "StorageRequestError",
        "http_status": 403,
        "s3_code": s3_code,
        "stopped_by": "not_retryable",
        "causes": [{"attempt": 1, "error_code": "STORAGE_FAILED", "cause": "storage_refused"}],
    }
    assert worker.calls == 1 and seconds < 10.0
    assert not await storage.exists(key)
    # The warning says what the store said; no line names the key's secret (nor the wrong key id).
    lines = [record.getMessage() for record in caplog.records]
    expected = f"generation {generation_id}: could not store the image: StorageRequestError: PUT {key}: HTTP 403 "
    assert [line for line in lines if line.startswith(expected)] == [expected + s3_code], lines
    assert not [line for line in lines if secret in line or (wrong == "access_key_id" and key_id in line)]
