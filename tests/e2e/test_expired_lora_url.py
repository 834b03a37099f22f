"""The seed's first risk over the real path: a LoRA URL that has expired by the time the worker fetches it.

The gateway reaches SeaweedFS through a delaying proxy (tests/support/stack/delaying_proxy.py), so the LoRA URLs it
signs
name the proxy's host:port and the worker downloads through it; the proxy forwards every byte as it is, so the
signatures stay valid. It holds the first GET of a LoRA until the URL has expired (X-Amz-Date + X-Amz-Expires, one
second past, with the shortest TTL the gateway accepts: LORA_URL_TTL_SECONDS=10), then forwards it: the store answers
403 (expired), the worker reports LORA_DOWNLOAD_FAILED with `details.http_status: 403` (docs/worker.md), the gateway
signs a fresh URL for its second attempt (retries.py: `lora_url_refused`, "fresh_url_once"), and the generation
completes. This module costs one stack start (~15 s) and the ~11 s hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from contracts.object_keys import LORA_PREFIX, generation_image_key
from scripts.stacklib import flow
from scripts.stacklib.config import StackConfig
from scripts.stacklib.runner import LocalStack
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.tools.s3_local import LOCAL_REGION
from tests.e2e.conftest import running_stack
from tests.support.prometheus import metric_value
from tests.support.stack.delaying_proxy import DelayingProxy, Exchange, HoldFirstUntilExpired, presigned_expiry

pytestmark = pytest.mark.slow

# The floor of LORA_URL_TTL_SECONDS (services/inference_gateway/settings.py): the hold lasts about this long.
LORA_URL_TTL_SECONDS = 10


@dataclass(frozen=True)
class ExpiryStack:
    """The stack, and the proxy in front of its S3 endpoint that only the gateway goes through."""

    stack: LocalStack
    proxy: DelayingProxy
    hold: HoldFirstUntilExpired


@pytest.fixture(scope="module")
def expiry_stack(
    rabbitmq_url: str, pg_admin_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExpiryStack]:
    """The e2e stack with the gateway (alone) pointed at S3 through the proxy, whose target port is known once the
    stack's ports are chosen."""
    proxies: list[tuple[DelayingProxy, HoldFirstUntilExpired]] = []

    def through_proxy(config: StackConfig) -> StackConfig:
        hold = HoldFirstUntilExpired(f"/{config.bucket}/{LORA_PREFIX}", margin_seconds=1.0)
        proxy = DelayingProxy(config.host, config.ports["s3"], hold=hold, name="s3-for-gateway").start()
        proxies.append((proxy, hold))
        gateway_env = {"R2_ENDPOINT_URL": proxy.url, "LORA_URL_TTL_SECONDS": str(LORA_URL_TTL_SECONDS)}
        return replace(config, service_env={"gateway": gateway_env})

    short_backoffs = {"GATEWAY_BACKOFF_BASE_SECONDS": "0.05", "GATEWAY_BACKOFF_MAX_SECONDS": "0.2"}
    run_dir = tmp_path_factory.mktemp("expiry-stack")
    try:
        with running_stack(
            rabbitmq_url, pg_admin_url, tiny_model_dir, run_dir, short_backoffs, adjust=through_proxy
        ) as local:
            proxy, hold = proxies[0]
            yield ExpiryStack(local, proxy, hold)
    finally:
        for proxy, _ in proxies:
            proxy.stop()


async def stored_image(config: StackConfig, key: str) -> bytes:
    """An object of the stack's bucket, read from SeaweedFS directly (not through the proxy)."""
    credentials = config.s3_credentials()
    store = ObjectStorage(
        StorageConfig(
            config.url("s3"), credentials.access_key_id, credentials.secret_access_key, config.bucket, LOCAL_REGION
        )
    )
    try:
        return await store.get_bytes(key)
    finally:
        await store.close()


def lora_gets(proxy: DelayingProxy, bucket: str) -> list[Exchange]:
    return [
        e
        for e in proxy.exchanges
        if e.request.method == "GET" and e.request.path.startswith(f"/{bucket}/{LORA_PREFIX}")
    ]


async def test_a_lora_url_expired_before_the_download_is_refused_then_signed_afresh_and_the_generation_completes(
    expiry_stack: ExpiryStack, tmp_path: Path
) -> None:
    from gpu.tiny.lora import write_lora

    stack, proxy = expiry_stack.stack, expiry_stack.proxy
    urls, bucket = stack.urls(), stack.config.bucket
    # A LoRA of its own: no worker cache (keyed by sha256) can have it, so the worker must download it.
    lora = write_lora(tmp_path / "expiry.safetensors", seed=4242).read_bytes()

    def drive() -> tuple[flow.Lora, flow.Generation]:
        with httpx.Client(timeout=30.0) as client:
            auth = stack.bearer(f"e2e-{uuid.uuid4()}")
            avatar_id = flow.create_avatar(client, urls["identity"], auth, name="expiry avatar")
            registered = flow.register_lora(client, urls["identity"], auth, avatar_id, lora)
            flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
            accepted = flow.request_generation(client, urls["content"], auth, avatar_id, width=64, height=64, steps=2)
            return registered, flow.wait_generation(client, urls["content"], auth, str(accepted["id"]), timeout=90.0)

    registered, generation = await asyncio.to_thread(drive)
    gateway_log = stack.log_path("gateway").read_text(encoding="utf-8", errors="replace")
    logs = f"\ngateway log:\n{stack.tail('gateway', 30)}\nworker log:\n{stack.tail('worker', 30)}"

    # The generation completed, on its second attempt, and its image is in the bucket.
    assert generation.status == "completed", f"{generation.body}{logs}"
    assert generation.body["attempts"] == 2, generation.body
    stored = await stored_image(stack.config, generation_image_key(generation.id))
    assert hashlib.sha256(stored).hexdigest() == generation.body["image"]["sha256"]

    # Two downloads of the LoRA's object, each by its own URL: the first held past its expiry and refused as
    # expired, the second (signed for the second attempt) served.
    first, second = lora_gets(proxy, bucket)
    assert expiry_stack.hold.held == first.request
    assert first.request.path == second.request.path == f"/{bucket}/{registered.object_key}"
    assert first.request.query["X-Amz-Expires"] == second.request.query["X-Amz-Expires"] == str(LORA_URL_TTL_SECONDS)
    assert first.request.query["X-Amz-Signature"] != second.request.query["X-Amz-Signature"]
    first_expiry = presigned_expiry(first.request)
    assert first_expiry is not None and first.forwarded_at is not None and first.forwarded_at > first_expiry
    assert first.status == 403 and b"expired" in first.body.lower(), (first.status, first.body)
    assert second.held_seconds == 0.0 and second.status == 200
    assert second.received_at > first.forwarded_at

    # The image's header-signed PUT went through the proxy too (a signature for the proxy's host stays valid).
    puts = [e for e in proxy.exchanges if e.request.method == "PUT" and e.request.path.endswith(f"{generation.id}.png")]
    assert [e.status for e in puts] == [200]

    # The gateway says why it tried again: its warning names the cause, its metrics count the retry.
    refusal = rf"generation {generation.id} attempt 1 failed with LORA_DOWNLOAD_FAILED \(lora_url_refused: .*\)"
    assert re.search(refusal, gateway_log), logs
    async with httpx.AsyncClient(timeout=10.0) as client:
        metrics = (await client.get(f"{urls['gateway']}/metrics")).text
    assert metric_value(metrics, "vixen_gateway_retries_total", cause="lora_url_refused") == 1.0
    # No presigned URL's signature is written in the gateway's log.
    assert "X-Amz-Signature" not in gateway_log
