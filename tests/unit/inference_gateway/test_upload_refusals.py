"""An upload the store refuses is not an outage: a 4xx (a wrong key, a missing bucket) fails the generation at once
with the store's status and code; a 5xx or 429 is retried over the upload window like an unreachable store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from contracts.events import GenerationCompleted, GenerationFailed
from contracts.object_keys import generation_image_key
from services.common.storage.objects import StorageRequestError
from services.inference_gateway.retries import RetryPolicy
from tests.support.gateway.fakes import GENERATION_ID, FakeStorage, FakeWorker, requested, service_on_fakes, success


class AnsweringStorage(FakeStorage):
    """A bucket whose first `refusals` puts the endpoint answers with `status` and `code`."""

    def __init__(self, status: int, code: str | None, refusals: int) -> None:
        super().__init__()
        self.status, self.code, self.refusals = status, code, refusals

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> object:
        if self.refusals > 0:
            self.refusals -= 1
            self.puts += 1
            raise StorageRequestError("PUT", key, self.status, self.code)
        return await super().put_bytes(key, data, content_type)


POLICY = RetryPolicy(max_attempts=3, backoff_base_seconds=0.05, backoff_max_seconds=0.2)


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "SignatureDoesNotMatch"), (403, "InvalidAccessKeyId"), (403, "RequestTimeTooSkewed"), (404, None)],
)
async def test_a_refused_upload_fails_at_once_with_the_store_answer(status: int, code: str | None) -> None:
    storage = AnsweringStorage(status, code, refusals=100)
    worker = FakeWorker(success())
    service, clock = service_on_fakes(worker, storage, policy=POLICY, upload_retry_seconds=120.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.retryable, result.attempts) == ("STORAGE_FAILED", False, 1)
    assert result.details == {
        "object_key": generation_image_key(GENERATION_ID),
        "reason": "StorageRequestError",
        "http_status": status,
        **({"s3_code": code} if code else {}),
        "stopped_by": "not_retryable",
        "causes": [{"attempt": 1, "error_code": "STORAGE_FAILED", "cause": "storage_refused"}],
    }
    assert len(worker.requests) == 1 and storage.puts == 1 and clock.sleeps == []


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (429, None)])
async def test_a_store_answering_busy_is_retried_like_an_outage_and_the_image_kept(
    status: int, code: str | None
) -> None:
    storage = AnsweringStorage(status, code, refusals=4)
    worker = FakeWorker(success())
    service, _ = service_on_fakes(worker, storage, policy=POLICY, upload_retry_seconds=120.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    # Past the three attempts, within the upload window; one GPU run.
    assert isinstance(result, GenerationCompleted) and result.attempts == 5
    assert len(worker.requests) == 1 and storage.puts == 5
