"""The gateway's decisions on cancel of a running generation, deadline timeouts, retries by cause and the CUDA_OOM
fallback, with stand-ins for the worker (named as such) and the fakes of tests/support/gateway/fakes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

import pytest

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import GenerationCompleted, GenerationFailed, GenerationStarted
from contracts.worker import WorkerRequest, WorkerSuccess
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.metrics import CANCELED_RUNNING, FALLBACKS, Metrics
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, Timing
from services.inference_gateway.retries import RetryLimits, RetryPolicy, retry_rule
from services.inference_gateway.service import GenerationService
from tests.support.gateway.fakes import (
    FakeClock,
    FakeStorage,
    FakeWorker,
    RecordingResultPublisher,
    gid,
    requested,
    success,
)


class BlockingStandInWorker:
    """A stand-in worker whose call blocks until cancelled; records that it was entered and cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = False
        self.calls = 0

    @property
    def mode(self) -> Literal["sync", "async"]:
        return "sync"

    async def generate(self, request: WorkerRequest, timeout_seconds: float, **_: object) -> WorkerSuccess:
        self.calls += 1
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


def build(
    worker: object, *, max_attempts: int = 3, worker_timeout: float = 600.0, fallback: object | None = None
) -> tuple[GenerationService, RecordingResultPublisher, FakeClock, Metrics]:
    events, clock, metrics = RecordingResultPublisher(), FakeClock(), Metrics()
    service = GenerationService(
        GatewayPorts(worker, FakeStorage(), events, fallback=fallback),  # type: ignore[arg-type]
        GenerationConfig(
            RetryLimits(RetryPolicy(max_attempts=max_attempts, backoff_base_seconds=1.0, backoff_max_seconds=8.0)),
            lora_url_ttl_seconds=300,
            worker_timeout_seconds=worker_timeout,
        ),
        metrics,
        Timing(clock=clock, sleep=clock.sleep, rand=lambda: 0.5),
    )
    return service, events, clock, metrics


def download_failed(**details: object) -> GatewayFailure:
    return GatewayFailure(WorkerErrorCode.LORA_DOWNLOAD_FAILED, "LoRA download failed", {"status": 424, **details})


# --- cancel of a running generation ---


async def test_a_cancel_while_the_worker_call_runs_cancels_the_call_and_publishes_nothing_more() -> None:
    worker = BlockingStandInWorker()
    service, events, _, metrics = build(worker)

    handling = asyncio.create_task(service.handle(requested(gid("gen-1"))))
    await worker.entered.wait()
    assert service.is_running(gid("gen-1"))
    service.note_canceled(gid("gen-1"))
    result = await handling

    assert result is None and worker.cancelled and worker.calls == 1
    assert [type(e).__name__ for e in events.events] == ["GenerationStarted"]
    assert not service.is_running(gid("gen-1"))
    assert metrics.value(CANCELED_RUNNING) == 1


async def test_a_cancel_of_another_generation_leaves_a_running_one_alone() -> None:
    worker = BlockingStandInWorker()
    service, _, _, metrics = build(worker)

    handling = asyncio.create_task(service.handle(requested(gid("gen-1"))))
    await worker.entered.wait()
    service.note_canceled(gid("gen-2"))

    assert not handling.done() and not worker.cancelled and metrics.value(CANCELED_RUNNING) == 0
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling


async def test_a_shutdown_cancelling_the_handler_still_propagates() -> None:
    # Cancelling the consumer's handler (shutdown) is not a generation.canceled: it must not be swallowed.
    worker = BlockingStandInWorker()
    service, _, _, _ = build(worker)

    handling = asyncio.create_task(service.handle(requested(gid("gen-1"))))
    await worker.entered.wait()
    handling.cancel()

    with pytest.raises(asyncio.CancelledError):
        await handling
    assert worker.cancelled and not service.is_running(gid("gen-1"))


# --- the deadline ---


async def test_a_worker_call_that_times_out_at_the_deadline_is_timeout_not_worker_unavailable() -> None:
    timed_out = GatewayFailure(
        GatewayErrorCode.WORKER_UNAVAILABLE, "worker did not answer within 75s", {"reason": "timeout"}
    )
    worker = FakeWorker(timed_out)
    # 60 s left and a worker timeout of 600 s: the call's budget is the time left until the deadline.
    service, _, _, _ = build(worker, worker_timeout=600.0)

    result = await service.handle(requested(deadline_in=timedelta(seconds=60)))

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.attempts) == ("TIMEOUT", 1)
    assert result.details["deadline"] and result.details["stopped_by"] == "deadline"


async def test_a_worker_call_that_outlives_the_gateways_patience_is_not_submitted_again() -> None:
    # The worker was told to stop at 30 s and had not answered 15 s later: it may still be running, and a second
    # attempt would run the generation twice.
    timed_out = GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "no answer", {"reason": "timeout"})
    worker = FakeWorker(timed_out, success())
    service, _, _, _ = build(worker, worker_timeout=30.0, max_attempts=2)

    result = await service.handle(requested(deadline_in=timedelta(minutes=10)))

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.attempts) == ("WORKER_UNAVAILABLE", 1)
    assert len(worker.requests) == 1 and result.details["stopped_by"] == "not_retryable"
    assert [c["cause"] for c in result.details["causes"]] == ["worker_timeout"]  # type: ignore[index]


# --- retries by cause ---


@pytest.mark.parametrize(
    ("failure", "cause", "rule"),
    [
        (download_failed(http_status=403), "lora_url_refused", "fresh_url_once"),
        (download_failed(http_status=401), "lora_url_refused", "fresh_url_once"),
        (download_failed(http_status=404), "lora_http_404", "never"),
        (download_failed(http_status=503), "lora_http_503", "retry"),
        (download_failed(http_status=429), "lora_http_429", "retry"),
        (download_failed(reason="sha256_mismatch", expected="a", actual="b"), "lora_sha256_mismatch", "never"),
        (download_failed(reason="ConnectError"), "lora_download_failed", "retry"),
        (GatewayFailure(WorkerErrorCode.LORA_LOAD_FAILED, "bad"), "lora_load_failed", "never"),
        (GatewayFailure(WorkerErrorCode.INVALID_REQUEST, "bad"), "invalid_request", "never"),
        (GatewayFailure(WorkerErrorCode.CUDA_OOM, "oom"), "cuda_oom", "retry"),
        (GatewayFailure(WorkerErrorCode.MODEL_LOAD_FAILED, "cold"), "model_load_failed", "retry"),
        (GatewayFailure(WorkerErrorCode.GENERATION_FAILED, "x", {"canceled": True}), "canceled_on_worker", "never"),
        (
            GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "x", {"status": 502}),
            "worker_unavailable",
            "retry_while_unreachable",
        ),
        (GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "x", {"reason": "timeout"}), "worker_timeout", "never"),
        (
            GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "x", {"reason": "ConnectTimeout"}),
            "worker_unavailable",
            "retry_while_unreachable",
        ),
        (
            GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "x", {"reason": "redirect_limit"}),
            "worker_unavailable",
            "retry",
        ),
        (GatewayFailure(GatewayErrorCode.INVALID_WORKER_RESPONSE, "x"), "invalid_worker_response", "never"),
    ],
)
def test_retry_rule_by_cause(failure: GatewayFailure, cause: str, rule: str) -> None:
    assert retry_rule(failure) == (cause, rule)


async def test_an_expired_lora_url_is_retried_once_with_a_freshly_signed_url() -> None:
    worker = FakeWorker(download_failed(http_status=403), success())
    service, _, _, _ = build(worker, max_attempts=5)

    result = await service.handle(requested())

    assert isinstance(result, GenerationCompleted) and result.attempts == 2
    first, second = (r.lora_url for r in worker.requests)
    assert first != second


async def test_an_expired_lora_url_refused_again_is_final_after_two_attempts() -> None:
    worker = FakeWorker(download_failed(http_status=403))
    service, _, _, _ = build(worker, max_attempts=5)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.attempts, result.retryable) == ("LORA_DOWNLOAD_FAILED", 2, False)
    assert result.details["stopped_by"] == "refused_again_with_a_fresh_url"
    assert result.details["causes"] == [
        {"attempt": 1, "error_code": "LORA_DOWNLOAD_FAILED", "cause": "lora_url_refused"},
        {"attempt": 2, "error_code": "LORA_DOWNLOAD_FAILED", "cause": "lora_url_refused"},
    ]


@pytest.mark.parametrize(
    "failure",
    [
        download_failed(reason="sha256_mismatch", expected="a", actual="b"),
        download_failed(http_status=404),
        GatewayFailure(WorkerErrorCode.LORA_LOAD_FAILED, "not a LoRA"),
        GatewayFailure(WorkerErrorCode.INVALID_REQUEST, "bad field"),
    ],
)
async def test_causes_that_are_never_retried(failure: GatewayFailure) -> None:
    worker = FakeWorker(failure, success())
    service, _, clock, _ = build(worker, max_attempts=5)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed) and len(worker.requests) == 1 and clock.sleeps == []
    assert (result.attempts, result.retryable, result.details["stopped_by"]) == (1, False, "not_retryable")


async def test_mixed_causes_are_each_recorded() -> None:
    down = GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "down", {"reason": "ConnectError"})
    worker = FakeWorker(down, download_failed(http_status=403), GatewayFailure(WorkerErrorCode.LORA_LOAD_FAILED, "x"))
    service, _, _, _ = build(worker, max_attempts=5)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed) and result.attempts == 3
    assert [c["cause"] for c in result.details["causes"]] == [  # type: ignore[index]
        "worker_unavailable",
        "lora_url_refused",
        "lora_load_failed",
    ]


# --- CUDA_OOM fallback ---


async def test_cuda_oom_gets_one_more_attempt_on_the_fallback_even_past_max_attempts() -> None:
    primary = FakeWorker(GatewayFailure(WorkerErrorCode.CUDA_OOM, "out of memory"))
    fallback = FakeWorker(success(), mode="sync")
    service, events, clock, metrics = build(primary, max_attempts=1, fallback=fallback)

    result = await service.handle(requested())

    assert isinstance(result, GenerationCompleted) and result.attempts == 2
    assert len(primary.requests) == 1 and len(fallback.requests) == 1 and clock.sleeps == [0.0]
    assert [e.attempt for e in events.events if isinstance(e, GenerationStarted)] == [1, 2]
    assert metrics.value(FALLBACKS) == 1


async def test_the_fallback_is_tried_once_and_its_failure_is_recorded() -> None:
    oom = GatewayFailure(WorkerErrorCode.CUDA_OOM, "out of memory")
    primary, fallback = FakeWorker(oom), FakeWorker(oom)
    service, _, _, _ = build(primary, max_attempts=1, fallback=fallback)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed) and result.attempts == 2
    assert len(primary.requests) == 1 and len(fallback.requests) == 1
    assert result.details["causes"] == [
        {"attempt": 1, "error_code": "CUDA_OOM", "cause": "cuda_oom"},
        {"attempt": 2, "error_code": "CUDA_OOM", "cause": "cuda_oom", "endpoint": "fallback"},
    ]


async def test_without_a_fallback_cuda_oom_is_retried_on_the_primary() -> None:
    primary = FakeWorker(GatewayFailure(WorkerErrorCode.CUDA_OOM, "out of memory"), success())
    service, _, _, metrics = build(primary, max_attempts=3)

    result = await service.handle(requested())

    assert isinstance(result, GenerationCompleted) and len(primary.requests) == 2
    assert metrics.value(FALLBACKS) == 0
