"""An unreachable worker (a restart) is retried past the attempts limit within a window; a timed-out call is not."""

from __future__ import annotations

from datetime import timedelta

import pytest

from contracts.errors import GatewayErrorCode
from contracts.events import GenerationCompleted, GenerationFailed
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.retries import UNREACHABLE_BACKOFF_MAX_SECONDS, RetryPolicy
from services.inference_gateway.service import GenerationService
from tests.support.gateway.fakes import FakeClock, FakeWorker, requested, service_on_fakes, success

REFUSED = GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "worker could not be reached", {"reason": "ConnectError"})


def build(worker: FakeWorker, worker_retry_seconds: float) -> tuple[GenerationService, FakeClock]:
    policy = RetryPolicy(max_attempts=3, backoff_base_seconds=1.0, backoff_max_seconds=30.0)
    return service_on_fakes(worker, policy=policy, worker_retry_seconds=worker_retry_seconds)


async def test_a_worker_down_for_40s_fails_no_generation_within_a_60s_window() -> None:
    # Attempts 1-3 with the usual backoff (1, 2 s), then 1, 2, 4, 8, 10, 10 s apart: the tenth attempt succeeds.
    worker = FakeWorker(*[REFUSED] * 9, success())
    service, clock = build(worker, worker_retry_seconds=60.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationCompleted) and result.attempts == 10
    assert clock.sleeps == [1.0, 2.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, UNREACHABLE_BACKOFF_MAX_SECONDS]


@pytest.mark.parametrize(
    "failure",
    [
        GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "5xx", {"status": 503}),
        GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "queue full", {"status": 429}),
        GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "reset", {"reason": "RemoteProtocolError"}),
    ],
)
async def test_a_worker_unreachable_longer_than_the_window_fails_once_the_window_closes(
    failure: GatewayFailure,
) -> None:
    worker = FakeWorker(*[failure] * 100)
    service, clock = build(worker, worker_retry_seconds=30.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationFailed) and result.error_code == "WORKER_UNAVAILABLE"
    assert result.details["stopped_by"] == "worker_retry_window"
    # The window counts from the first failure: 1 + 2 (within the attempts), then 1 + 2 + 4 + 8 + 10 would pass 30.
    assert clock.sleeps == [1.0, 2.0, 1.0, 2.0, 4.0, 8.0, 10.0] and sum(clock.sleeps) <= 30.0


@pytest.mark.parametrize(
    "failure",
    [
        GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "job expired", {"status": 410}),
        GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "lost the job", {"status": 404}),
    ],
)
async def test_a_call_that_may_have_run_stays_within_the_attempts_limit(failure: GatewayFailure) -> None:
    worker = FakeWorker(*[failure] * 100)
    service, _ = build(worker, worker_retry_seconds=600.0)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationFailed) and result.details["stopped_by"] == "max_attempts"
    assert len(worker.requests) == 3


async def test_without_a_window_the_attempts_limit_stops_the_retries() -> None:
    worker = FakeWorker(*[REFUSED] * 100)
    service, _ = build(worker, worker_retry_seconds=0.0)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed) and result.details["stopped_by"] == "max_attempts"
    assert len(worker.requests) == 3


async def test_the_deadline_still_bounds_the_window() -> None:
    worker = FakeWorker(*[REFUSED] * 100)
    service, clock = build(worker, worker_retry_seconds=600.0)

    result = await service.handle(requested(deadline_in=timedelta(seconds=20)))

    assert isinstance(result, GenerationFailed) and result.details["stopped_by"] == "deadline"
    assert sum(clock.sleeps) < 20.0
