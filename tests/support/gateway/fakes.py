"""Fakes for the inference gateway's ports (worker, bucket, result events, clock) and request builders."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from PIL import Image

from contracts.events import EventPayload, GenerationParams, GenerationRequested, LoraRef
from contracts.object_keys import lora_object_key
from contracts.worker import ModelInfo, Timings, WorkerRequest, WorkerSuccess
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.metrics import Metrics
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, Timing
from services.inference_gateway.retries import RetryLimits, RetryPolicy
from services.inference_gateway.service import GenerationService

LORA_SHA = "ab" * 32
# Where content names a ready LoRA (its content address), and a generation id as content issues one.
LORA_KEY = lora_object_key(LORA_SHA)
GENERATION_ID = "0b7c7d8e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"


def gid(label: str) -> str:
    """A generation id as content issues one (a canonical UUID), the same for the same label."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vixenbliss-test:{label}"))


START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def success(
    width: int = 64, height: int = 64, request_id: str | None = None, image_base64: str | None = None
) -> WorkerSuccess:
    return WorkerSuccess(
        image_base64=image_base64 if image_base64 is not None else base64.b64encode(png_bytes(width, height)).decode(),
        generation_time_seconds=0.25,
        model_info=ModelInfo(base_model="tiny-sdxl-random", lora_applied=True, lora_scale=0.8),
        request_id=request_id,
        timings=Timings(denoise_ms=200.0, total_ms=250.0, lora_source="download"),
    )


def requested(
    generation_id: str = GENERATION_ID,
    *,
    now: datetime = START,
    deadline_in: timedelta = timedelta(minutes=5),
    lora_key: str | None = LORA_KEY,
    width: int = 64,
    height: int = 64,
    steps: int = 2,
) -> GenerationRequested:
    return GenerationRequested(
        generation_id=generation_id,
        owner_id="owner-1",
        avatar_id="avatar-1",
        lora=LoraRef(lora_model_id="lora-1", object_key=lora_key, sha256=LORA_SHA, scale=0.8) if lora_key else None,
        params=GenerationParams(prompt="a portrait of sks person", width=width, height=height, steps=steps, seed=7),
        requested_at=now,
        deadline=now + deadline_in,
    )


class FakeClock:
    """A clock that only moves when told (or when the fake sleep sleeps)."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


class FakeWorker:
    """Answers each call with the next scripted outcome (a success, or a failure to raise)."""

    def __init__(self, *outcomes: WorkerSuccess | GatewayFailure, mode: Literal["sync", "async"] = "sync") -> None:
        self._outcomes = list(outcomes)
        self._mode: Literal["sync", "async"] = mode
        self.requests: list[WorkerRequest] = []
        self.timeouts: list[float] = []
        # Async mode: the call ids handed to on_call, and those polled again with resume().
        self.calls: list[str] = []
        self.resumed: list[str] = []
        self.keeping_jobs = False

    @property
    def mode(self) -> Literal["sync", "async"]:
        return self._mode

    async def generate(
        self,
        request: WorkerRequest,
        timeout_seconds: float,
        *,
        on_call: Callable[[str], Awaitable[None]] | None = None,
    ) -> WorkerSuccess:
        self.requests.append(request)
        self.timeouts.append(timeout_seconds)
        if on_call is not None and self._mode == "async":
            call_id = f"call-{len(self.requests)}"
            self.calls.append(call_id)
            await on_call(call_id)
        return self._next()

    async def resume(self, call_id: str, timeout_seconds: float) -> WorkerSuccess:
        self.resumed.append(call_id)
        self.timeouts.append(timeout_seconds)
        return self._next()

    def keep_jobs_on_cancel(self) -> None:
        self.keeping_jobs = True

    def _next(self) -> WorkerSuccess:
        outcome = self._outcomes.pop(0) if len(self._outcomes) > 1 else self._outcomes[0]
        if isinstance(outcome, GatewayFailure):
            # A fresh copy each time: the service may add details to the one it sees.
            raise GatewayFailure(outcome.code, outcome.message, dict(outcome.details))
        return outcome


class FakeStorage:
    """A bucket in a dict; presigned URLs carry a visible signature and a counter; puts can be made to fail."""

    def __init__(self, put_failures: int = 0) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.presigned: list[tuple[str, int]] = []
        self.put_failures = put_failures
        self.puts = 0

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        self.presigned.append((key, ttl_seconds))
        n = len(self.presigned)
        return f"http://127.0.0.1:9/bucket/{key}?X-Amz-Expires={ttl_seconds}&X-Amz-Signature=deadbeef{n:04d}"

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> object:
        self.puts += 1
        if self.put_failures > 0:
            self.put_failures -= 1
            raise ConnectionError("storage is down")
        self.objects[key] = (data, content_type)
        return None


class RecordingResultPublisher:
    """Keeps what was published; can be told to fail (as an unconfirmed publish would)."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[EventPayload] = []
        self.traceparents: list[str | None] = []
        self.fail = fail

    async def publish(self, payload: EventPayload, *, generation_id: str, traceparent: str | None) -> None:
        if self.fail:
            raise TimeoutError("no confirm from the broker")
        assert generation_id == getattr(payload, "generation_id", None)
        self.events.append(payload)
        self.traceparents.append(traceparent)


def service_on_fakes(
    worker: FakeWorker,
    storage: FakeStorage | None = None,
    *,
    policy: RetryPolicy,
    rand: float = 1.0,
    **options: Any,
) -> tuple[GenerationService, FakeClock]:
    """A GenerationService over fakes, on a fake clock whose sleeps are recorded; `upload_retry_seconds` and
    `worker_retry_seconds` go to its retry limits, other `options` to the service."""
    clock = FakeClock()
    windows = {k: options.pop(k) for k in ("upload_retry_seconds", "worker_retry_seconds") if k in options}
    service = GenerationService(
        GatewayPorts(worker, storage or FakeStorage(), RecordingResultPublisher()),
        GenerationConfig(RetryLimits(policy, **windows), lora_url_ttl_seconds=300, worker_timeout_seconds=600.0),
        Metrics(),
        Timing(clock=clock, sleep=clock.sleep, rand=lambda: rand),
        **options,
    )
    return service, clock
