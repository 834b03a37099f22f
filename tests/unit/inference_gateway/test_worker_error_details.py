"""The worker's LORA_DOWNLOAD_FAILED details that the gateway's retry rules read (service.retry_rule): the LoRA
host's HTTP status as `http_status`, and `reason: sha256_mismatch` for bytes that do not match the request."""

from __future__ import annotations

import hashlib

import pytest

from contracts.errors import LORA_SHA256_MISMATCH_REASON
from gpu.engine.errors import WorkerFailure
from gpu.engine.lora.cache import MemoryLoraCache
from gpu.engine.lora.download import DownloadPolicy, download
from gpu.engine.lora.store import LoraStore
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.retries import retry_rule
from tests.support.file_server import FileServer, Route

LOCAL = DownloadPolicy(mode="local")


def as_gateway_sees_it(failure: WorkerFailure) -> GatewayFailure:
    error = failure.to_error()
    # provider.outcome_of adds the worker answer's HTTP status as `status`, over the worker's own.
    return GatewayFailure(error.error_code, error.error, {**error.details, "status": 424})


@pytest.mark.parametrize(("status", "rule"), [(403, "fresh_url_once"), (401, "fresh_url_once"), (404, "never")])
def test_a_refused_download_carries_the_hosts_status(status: int, rule: str) -> None:
    server = FileServer().start()
    try:
        url = server.add("/b/k.safetensors", Route(status=status, body=b"<Error/>"))
        with pytest.raises(WorkerFailure) as caught:
            download(url + "?X-Amz-Signature=abc", LOCAL)
    finally:
        server.stop()

    assert caught.value.details["http_status"] == status
    assert retry_rule(as_gateway_sees_it(caught.value))[1] == rule


def test_a_sha256_mismatch_says_so_and_is_never_retried() -> None:
    server = FileServer().start()
    try:
        url = server.add("/b/k.safetensors", b"not the bytes the request named")
        store = LoraStore(LOCAL, MemoryLoraCache(budget_bytes=1 << 20))
        with pytest.raises(WorkerFailure) as caught:
            store.get(url, hashlib.sha256(b"other bytes").hexdigest(), plan=lambda tensors: pytest.fail("planned"))
    finally:
        server.stop()

    assert caught.value.details["reason"] == LORA_SHA256_MISMATCH_REASON
    assert retry_rule(as_gateway_sees_it(caught.value)) == ("lora_sha256_mismatch", "never")
