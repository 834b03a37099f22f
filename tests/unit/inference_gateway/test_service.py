"""The gateway's decisions with fakes: deadline, retries and backoff, image checks, storage, result events."""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import timedelta

import pytest

from contracts.budget import GenerationBudget
from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import GenerationCompleted, GenerationFailed, GenerationStarted
from contracts.object_keys import generation_image_key
from services.inference_gateway.attempts import RESPONSE_GRACE_SECONDS
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.metrics import CANCELS, COMPLETED, FAILED, REQUESTS, RETRIES, SKIPPED_CANCELED, Metrics
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, Timing
from services.inference_gateway.retries import RetryLimits, RetryPolicy, backoff_delay, is_retryable
from services.inference_gateway.service import GenerationService
from tests.support.gateway.fakes import (
    GENERATION_ID,
    LORA_KEY,
    FakeClock,
    FakeStorage,
    FakeWorker,
    RecordingResultPublisher,
    gid,
    png_bytes,
    requested,
    success,
)

DEFAULT_BUDGET = GenerationBudget()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def build(
    worker: FakeWorker,
    storage: FakeStorage | None = None,
    events: RecordingResultPublisher | None = None,
    *,
    clock: FakeClock | None = None,
    max_attempts: int = 3,
    worker_timeout: float = 600.0,
    canceled_memory: int = 10_000,
    budget: GenerationBudget = DEFAULT_BUDGET,
) -> tuple[GenerationService, FakeStorage, RecordingResultPublisher, FakeClock, Metrics]:
    storage = storage or FakeStorage()
    events = events or RecordingResultPublisher()
    clock = clock or FakeClock()
    metrics = Metrics()
    service = GenerationService(
        GatewayPorts(worker, storage, events),
        GenerationConfig(
            RetryLimits(RetryPolicy(max_attempts=max_attempts, backoff_base_seconds=1.0, backoff_max_seconds=8.0)),
            lora_url_ttl_seconds=300,
            worker_timeout_seconds=worker_timeout,
            secrets=["super-secret-token"],
            budget=budget,
            canceled_memory=canceled_memory,
        ),
        metrics,
        Timing(clock=clock, sleep=clock.sleep, rand=lambda: 0.5),
    )
    return service, storage, events, clock, metrics


def types_of(events: RecordingResultPublisher) -> list[str]:
    return [type(e).__name__ for e in events.events]


async def test_success_stores_the_png_and_reports_it() -> None:
    worker = FakeWorker(success(request_id=gid("gen-1")))
    service, storage, events, _, metrics = build(worker)

    result = await service.handle(requested(gid("gen-1")), traceparent=TRACEPARENT)

    assert types_of(events) == ["GenerationStarted", "GenerationCompleted"]
    started, completed = events.events
    assert isinstance(started, GenerationStarted) and started.attempt == 1 and started.worker_mode == "sync"
    assert isinstance(completed, GenerationCompleted) and completed == result
    data, content_type = storage.objects[generation_image_key(gid("gen-1"))]
    assert content_type == "image/png"
    assert completed.image.object_key == generation_image_key(gid("gen-1"))
    assert completed.image.sha256 == hashlib.sha256(data).hexdigest()
    assert (completed.image.width, completed.image.height, completed.image.size_bytes) == (64, 64, len(data))
    assert completed.model_info.base_model == "tiny-sdxl-random"
    assert completed.timings is not None and completed.timings.lora_source == "download"
    assert completed.attempts == 1 and completed.generation_time_seconds == 0.25
    assert events.traceparents == [TRACEPARENT, TRACEPARENT]
    assert metrics.value(COMPLETED) == 1


async def test_the_worker_gets_the_contract_body_with_a_signed_url_and_a_bounded_timeout() -> None:
    worker = FakeWorker(success())
    service, storage, _, _, _ = build(worker, worker_timeout=600.0)

    await service.handle(requested(gid("gen-1"), deadline_in=timedelta(seconds=90)))

    (sent,) = worker.requests
    assert storage.presigned == [(LORA_KEY, 300)]
    assert sent.lora_url is not None and "X-Amz-Signature=" in sent.lora_url
    assert sent.request_id == gid("gen-1")
    assert sent.lora_sha256 == "ab" * 32 and sent.lora_scale == 0.8
    assert (sent.width, sent.height, sent.steps, sent.seed) == (64, 64, 2, 7)
    # The worker gets what is left until the deadline; the HTTP wait adds a grace period for the answer.
    assert sent.timeout_seconds == pytest.approx(90.0)
    assert worker.timeouts == [pytest.approx(90.0 + RESPONSE_GRACE_SECONDS)]


async def test_no_lora_means_no_url_and_no_signing() -> None:
    worker = FakeWorker(success())
    service, storage, events, _, _ = build(worker)

    await service.handle(requested(lora_key=None))

    assert worker.requests[0].lora_url is None and worker.requests[0].lora_sha256 is None
    assert storage.presigned == []
    assert isinstance(events.events[-1], GenerationCompleted)


async def test_an_expired_deadline_fails_with_timeout_without_calling_the_worker() -> None:
    worker = FakeWorker(success())
    clock = FakeClock()
    service, storage, events, _, metrics = build(worker, clock=clock)
    request = requested(deadline_in=timedelta(seconds=30))
    clock.now += timedelta(seconds=31)

    result = await service.handle(request)

    assert worker.requests == [] and storage.presigned == []
    assert types_of(events) == ["GenerationFailed"]
    assert isinstance(result, GenerationFailed)
    assert result.error_code == "TIMEOUT" and result.retryable and result.attempts == 1
    assert result.details["worker_called"] is False
    assert metrics.value(FAILED, error_code="TIMEOUT") == 1


async def test_a_non_retryable_worker_error_fails_after_one_attempt() -> None:
    failure = GatewayFailure(WorkerErrorCode.LORA_LOAD_FAILED, "LoRA file is not safetensors", {"status": 422})
    worker = FakeWorker(failure)
    service, _, events, clock, _ = build(worker)

    result = await service.handle(requested())

    assert len(worker.requests) == 1 and clock.sleeps == []
    assert types_of(events) == ["GenerationStarted", "GenerationFailed"]
    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.retryable, result.attempts) == ("LORA_LOAD_FAILED", False, 1)
    assert result.error == "LoRA file is not safetensors"
    assert result.details == {
        "status": 422,
        "stopped_by": "not_retryable",
        "causes": [{"attempt": 1, "error_code": "LORA_LOAD_FAILED", "cause": "lora_load_failed"}],
    }


async def test_retryable_failures_are_retried_with_backoff_and_a_fresh_url_each_time() -> None:
    down = GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "worker could not be reached")
    worker = FakeWorker(down)
    service, storage, events, clock, metrics = build(worker, max_attempts=3)

    result = await service.handle(requested())

    assert len(worker.requests) == 3
    urls = [r.lora_url for r in worker.requests]
    assert len(set(urls)) == 3 and len(storage.presigned) == 3
    # Exponential with half jitter (rand fixed at 0.5): 0.75 × 1 s, then 0.75 × 2 s.
    assert clock.sleeps == [pytest.approx(0.75), pytest.approx(1.5)]
    assert types_of(events) == ["GenerationStarted"] * 3 + ["GenerationFailed"]
    assert [e.attempt for e in events.events[:3] if isinstance(e, GenerationStarted)] == [1, 2, 3]
    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.retryable, result.attempts) == ("WORKER_UNAVAILABLE", True, 3)
    assert metrics.value(RETRIES) == 2


async def test_a_retry_that_succeeds_reports_the_attempts() -> None:
    worker = FakeWorker(GatewayFailure(WorkerErrorCode.LORA_DOWNLOAD_FAILED, "URL expired"), success())
    service, _, events, _, _ = build(worker)

    result = await service.handle(requested())

    assert isinstance(result, GenerationCompleted) and result.attempts == 2
    assert types_of(events) == ["GenerationStarted", "GenerationStarted", "GenerationCompleted"]


async def test_the_completed_event_says_when_the_attempt_that_made_the_image_started() -> None:
    worker = FakeWorker(GatewayFailure(WorkerErrorCode.LORA_DOWNLOAD_FAILED, "URL expired"), success())
    service, _, _, clock, _ = build(worker)
    first_attempt = clock.now

    result = await service.handle(requested())

    # The retry began after the backoff: its start, not the first attempt's, is the one reported.
    assert isinstance(result, GenerationCompleted) and result.started_at is not None
    assert result.started_at == first_attempt + timedelta(seconds=sum(clock.sleeps)) > first_attempt


async def test_retries_stop_at_the_deadline() -> None:
    worker = FakeWorker(GatewayFailure(WorkerErrorCode.CUDA_OOM, "out of memory"))
    service, _, events, _, _ = build(worker, max_attempts=5)

    # 1.0 s left: the first backoff (0.75 s) fits, the second (1.5 s) does not.
    result = await service.handle(requested(deadline_in=timedelta(seconds=1)))

    assert len(worker.requests) == 2
    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.attempts) == ("CUDA_OOM", 2)
    assert result.details["stopped_by"] == "deadline"
    assert types_of(events)[-1] == "GenerationFailed"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (success(image_base64="not base64 at all!"), "base64"),
        (success(image_base64=base64.b64encode(b"GIF89a not a png").decode()), "does not decode"),
        (success(width=128, height=64), "size"),
        (success(request_id="someone-else"), "another request"),
    ],
)
async def test_a_bad_image_is_invalid_worker_response_and_not_retried(answer: object, why: str) -> None:
    worker = FakeWorker(answer)  # type: ignore[arg-type]
    service, storage, _, _, _ = build(worker)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.attempts, result.retryable) == ("INVALID_WORKER_RESPONSE", 1, False)
    assert why in result.error
    assert storage.objects == {}


async def test_a_jpeg_is_refused_even_at_the_right_size() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="JPEG")
    worker = FakeWorker(success(image_base64=base64.b64encode(buffer.getvalue()).decode()))
    service, _, _, _, _ = build(worker)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed) and result.error_code == "INVALID_WORKER_RESPONSE"
    assert result.details["format"] == "JPEG"


async def test_a_storage_failure_retries_the_upload_without_regenerating() -> None:
    worker = FakeWorker(success())
    storage = FakeStorage(put_failures=1)
    service, _, events, _, _ = build(worker, storage)

    result = await service.handle(requested())

    assert len(worker.requests) == 1 and storage.puts == 2
    assert isinstance(result, GenerationCompleted) and result.attempts == 2
    assert types_of(events) == ["GenerationStarted", "GenerationCompleted"]


async def test_storage_that_stays_down_fails_with_storage_failed() -> None:
    storage = FakeStorage(put_failures=10)
    service, _, _, _, _ = build(FakeWorker(success()), storage)

    result = await service.handle(requested())

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.retryable, result.attempts) == ("STORAGE_FAILED", True, 3)
    assert result.details == {
        "object_key": generation_image_key(GENERATION_ID),
        "reason": "ConnectionError",
        "stopped_by": "max_attempts",
        "causes": [{"attempt": n, "error_code": "STORAGE_FAILED", "cause": "storage_failed"} for n in (1, 2, 3)],
    }


async def test_a_repeat_overwrites_the_same_object() -> None:
    worker = FakeWorker(success())
    service, storage, _, _, _ = build(worker)

    await service.handle(requested(gid("gen-1")))
    await service.handle(requested(gid("gen-1")))

    assert list(storage.objects) == [generation_image_key(gid("gen-1"))] and storage.puts == 2


async def test_details_are_sanitized_and_nothing_secret_is_published_or_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leaky = GatewayFailure(
        WorkerErrorCode.LORA_DOWNLOAD_FAILED,
        "GET http://r2.example/b/k.safetensors?X-Amz-Signature=abc123&X-Amz-Credential=key failed",
        {
            "url": "https://r2.example/b/k.safetensors?X-Amz-Signature=abc123",
            "nested": {"header": "Authorization: Bearer super-secret-token", "token": "super-secret-token"},
            "status": 403,
        },
    )
    service, _, _, _, _ = build(FakeWorker(leaky), max_attempts=2)

    with caplog.at_level(logging.DEBUG):
        result = await service.handle(requested())

    assert isinstance(result, GenerationFailed)
    published = result.model_dump_json()
    for secret in ("abc123", "X-Amz-Credential", "super-secret-token", "deadbeef"):
        assert secret not in published
        assert secret not in caplog.text
    assert result.details["url"] == "https://r2.example/b/k.safetensors"
    assert result.details["status"] == 403
    assert "http://r2.example/b/k.safetensors failed" in result.error


async def test_an_unconfirmed_result_event_raises_so_the_message_is_redelivered() -> None:
    service, _, _, _, _ = build(FakeWorker(success()), events=RecordingResultPublisher(fail=True))

    with pytest.raises(TimeoutError):
        await service.handle(requested())


async def test_a_request_the_worker_contract_refuses_is_invalid_request() -> None:
    request = requested()
    request = request.model_copy(update={"params": request.params.model_copy(update={"prompt": "   "})})
    service, _, events, _, _ = build(FakeWorker(success()))

    result = await service.handle(request)

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.retryable) == ("INVALID_REQUEST", False)
    assert result.details["fields"] == ["prompt"]
    assert types_of(events) == ["GenerationFailed"]


async def test_a_request_canceled_before_it_started_is_not_run_and_publishes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = FakeWorker(success())
    service, storage, events, _, metrics = build(worker)
    service.note_canceled(gid("gen-canceled"))

    with caplog.at_level(logging.INFO, logger="services.inference_gateway.service"):
        skipped = await service.handle(requested(gid("gen-canceled")))
    other = await service.handle(requested(gid("gen-other")))

    assert skipped is None
    assert f"generation {gid('gen-canceled')} was canceled before it started; not run" in caplog.text
    # Only the other generation reached the worker, the bucket and the result events.
    assert [r.request_id for r in worker.requests] == [gid("gen-other")]
    assert storage.presigned == [(LORA_KEY, 300)]
    assert list(storage.objects) == [generation_image_key(gid("gen-other"))]
    assert isinstance(other, GenerationCompleted)
    assert types_of(events) == ["GenerationStarted", "GenerationCompleted"]
    assert {getattr(e, "generation_id", None) for e in events.events} == {gid("gen-other")}
    assert metrics.value(REQUESTS) == 2 and metrics.value(CANCELS) == 1 and metrics.value(SKIPPED_CANCELED) == 1


async def test_a_cancel_is_skipped_even_when_its_deadline_has_passed() -> None:
    clock = FakeClock()
    service, _, events, _, _ = build(FakeWorker(success()), clock=clock)
    request = requested(gid("gen-1"), deadline_in=timedelta(seconds=30))
    service.note_canceled(gid("gen-1"))
    clock.now += timedelta(seconds=31)

    assert await service.handle(request) is None
    assert events.events == []  # no TIMEOUT for a generation its owner canceled


async def test_the_canceled_record_is_bounded_and_forgets_the_oldest_first() -> None:
    worker = FakeWorker(success())
    service, _, _, _, _ = build(worker, canceled_memory=2)

    service.note_canceled(gid("gen-1"))
    service.note_canceled(gid("gen-2"))
    service.note_canceled(gid("gen-1"))  # seen again: now the newest
    service.note_canceled(gid("gen-3"))  # over the cap: gen-2, the oldest, is forgotten

    assert [service.was_canceled(g) for g in (gid("gen-1"), gid("gen-2"), gid("gen-3"))] == [True, False, True]
    assert await service.handle(requested(gid("gen-2"))) is not None
    assert [r.request_id for r in worker.requests] == [gid("gen-2")]


def test_retryable_codes() -> None:
    assert is_retryable(GatewayErrorCode.WORKER_UNAVAILABLE)
    assert is_retryable(GatewayErrorCode.STORAGE_FAILED)
    assert not is_retryable(GatewayErrorCode.INVALID_WORKER_RESPONSE)
    assert is_retryable(WorkerErrorCode.LORA_DOWNLOAD_FAILED)
    assert not is_retryable(WorkerErrorCode.LORA_LOAD_FAILED)
    assert not is_retryable(WorkerErrorCode.GENERATION_FAILED)


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base_seconds=1.0, backoff_max_seconds=5.0)
    assert [backoff_delay(n, policy, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert [backoff_delay(n, policy, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.5]


def test_png_helper_makes_pngs() -> None:
    assert png_bytes(8, 8).startswith(b"\x89PNG")


class FailingStorage(FakeStorage):
    """Signing or storing fails with an error whose text carries a presigned URL and a configured secret."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    def _error(self) -> Exception:
        return PermissionError(
            "denied for https://r2.example/b/k.png?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=abc123"
            " with Authorization: Bearer super-secret-token (key super-secret-token)"
        )

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        if self.failing == "sign":
            raise self._error()
        return await super().presign_get(key, ttl_seconds)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> object:
        if self.failing == "store":
            raise self._error()
        return await super().put_bytes(key, data, content_type)


@pytest.mark.parametrize(("failing", "what"), [("sign", "could not sign the LoRA URL"), ("store", "could not store")])
async def test_a_storage_error_is_logged_with_its_cause_and_nothing_secret(
    failing: str, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    service, _, _, _, _ = build(FakeWorker(success()), FailingStorage(failing), max_attempts=1)

    with caplog.at_level(logging.DEBUG):
        result = await service.handle(requested(gid("gen-store")))

    assert isinstance(result, GenerationFailed) and result.error_code == "STORAGE_FAILED"
    assert result.details["reason"] == "PermissionError"
    prefix = f"generation {gid('gen-store')}: {what}"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]
    # The generation, the exception's type and its message, without the URL's query or the secret.
    assert "PermissionError: denied for" in line
    assert "https://r2.example/b/k.png" in line
    for secret in ("abc123", "AKIAEXAMPLE", "X-Amz-Credential", "super-secret-token"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("width", "height", "steps", "budget"),
    [
        (2048, 2048, 100, GenerationBudget()),  # 8× the default cost
        (1024, 1024, 28, GenerationBudget(max_side=512)),  # a deployment's tighter bounds
    ],
)
async def test_a_request_over_the_budget_fails_as_invalid_without_calling_the_worker(
    width: int, height: int, steps: int, budget: GenerationBudget
) -> None:
    worker = FakeWorker(success(width, height))
    service, storage, events, _, _ = build(worker, budget=budget)

    result = await service.handle(requested(width=width, height=height, steps=steps))

    assert isinstance(result, GenerationFailed) and result.error_code == "INVALID_REQUEST" and not result.retryable
    assert result.details["worker_called"] is False and "width" in result.details["fields"]
    assert types_of(events) == ["GenerationFailed"]
    assert worker.requests == [] and storage.presigned == [] and storage.objects == {}
