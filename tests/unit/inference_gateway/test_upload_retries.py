"""The upload of an image already made is retried past the attempts limit while storage is down, within a window."""

from __future__ import annotations

from datetime import timedelta

from contracts.events import GenerationCompleted, GenerationFailed
from services.inference_gateway.retries import UPLOAD_BACKOFF_MAX_SECONDS, RetryPolicy
from services.inference_gateway.service import GenerationService
from tests.support.gateway.fakes import FakeClock, FakeStorage, FakeWorker, requested, service_on_fakes, success


def build(storage: FakeStorage, worker: FakeWorker, upload_retry_seconds: float) -> tuple[GenerationService, FakeClock]:
    policy = RetryPolicy(max_attempts=2, backoff_base_seconds=0.05, backoff_max_seconds=0.2)
    return service_on_fakes(worker, storage, policy=policy, upload_retry_seconds=upload_retry_seconds)


async def test_storage_down_for_a_minute_still_gets_the_image_without_a_second_gpu_run() -> None:
    worker = FakeWorker(success())
    # 0.05 (the usual backoff), then 1 + 2 + 4 + 8 + 16 + 30 s past the attempts limit: the eighth upload succeeds.
    storage = FakeStorage(put_failures=7)
    service, clock = build(storage, worker, upload_retry_seconds=120.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationCompleted) and result.attempts == 8
    assert len(worker.requests) == 1 and storage.puts == 8
    assert clock.sleeps == [0.05, 1.0, 2.0, 4.0, 8.0, 16.0, UPLOAD_BACKOFF_MAX_SECONDS]


async def test_storage_down_longer_than_the_window_fails_with_storage_failed() -> None:
    storage = FakeStorage(put_failures=100)
    service, clock = build(storage, FakeWorker(success()), upload_retry_seconds=40.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationFailed) and result.error_code == "STORAGE_FAILED"
    assert result.details["stopped_by"] == "upload_retry_window"
    # Waits 0.05, 1, 2, 4, 8 and 16 s; the next (30) would end past 40 s of failing.
    assert sum(clock.sleeps) <= 40.0 and storage.puts == 7


async def test_without_a_window_the_attempts_limit_stops_the_upload() -> None:
    storage = FakeStorage(put_failures=100)
    service, _ = build(storage, FakeWorker(success()), upload_retry_seconds=0.0)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed) and result.details["stopped_by"] == "max_attempts"
    assert storage.puts == 2


async def test_the_deadline_still_bounds_the_upload_retries() -> None:
    storage = FakeStorage(put_failures=100)
    service, clock = build(storage, FakeWorker(success()), upload_retry_seconds=600.0)

    result = await service.handle(requested(deadline_in=timedelta(seconds=20)))

    assert isinstance(result, GenerationFailed) and result.details["stopped_by"] == "deadline"
    assert sum(clock.sleeps) < 20.0
