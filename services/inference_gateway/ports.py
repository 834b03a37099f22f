"""The ports of the gateway's use case: what it calls (worker, bucket, publisher, call recorder, time), the records it
hands across them (a worker call, where a resumed generation was left) and the bounds it runs under."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from contracts.budget import GenerationBudget
from contracts.events import EventPayload
from contracts.worker import WorkerRequest, WorkerSuccess
from services.inference_gateway.retries import RetryLimits

# How many recently canceled generation ids the gateway remembers (oldest forgotten first; cancels.py).
CANCELED_MEMORY = 10_000

OnCall = Callable[[str], Awaitable[None]]


class WorkerClient(Protocol):
    """Runs one attempt on the worker (worker_client.http.ModalWorkerClient)."""

    @property
    def mode(self) -> Literal["sync", "async"]: ...

    async def generate(
        self, request: WorkerRequest, timeout_seconds: float, *, on_call: OnCall | None = None
    ) -> WorkerSuccess:
        """One attempt; in async mode `on_call` gets the worker's call id as soon as the job is submitted."""
        ...

    async def resume(self, call_id: str, timeout_seconds: float) -> WorkerSuccess:
        """The result of a job submitted earlier (async mode), polled again without submitting anything."""
        ...

    def keep_jobs_on_cancel(self) -> None:
        """From now on a cancelled call leaves its async job running (shutdown: the job is resumed later)."""
        ...


@dataclass(frozen=True)
class WorkerCall:
    """An async worker call: its id and the endpoint that holds it ("primary" or "fallback")."""

    call_id: str
    endpoint: str


class CallRecorder(Protocol):
    """Keeps the worker call of a generation's current attempt (jobs.JobEvents over the job table)."""

    async def record_call(self, generation_id: str, call: WorkerCall) -> None: ...


@dataclass(frozen=True)
class Resumption:
    """Where a generation taken over from a stopped runner was left: attempts it had started, and the worker
    call its last attempt made (async mode), whose result is polled again instead of submitting a second run."""

    attempts: int
    call: WorkerCall | None = None
    call_started_at: datetime | None = None


class ObjectStore(Protocol):
    """The bucket (services.common.storage.objects.ObjectStorage)."""

    async def presign_get(self, key: str, ttl_seconds: int) -> str: ...

    async def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> object: ...


class ResultPublisher(Protocol):
    """Publishes one event and returns once it is on its way (jobs.JobEvents: staged with the job's change).

    It may raise to stop the generation: jobs.LeaseLostError when the job is no longer this runner's (canceled or
    taken over), which goes through the use case untouched to the runner that asked for the run."""

    async def publish(self, payload: EventPayload, *, generation_id: str, traceparent: str | None) -> None: ...


@dataclass(frozen=True)
class GatewayPorts:
    """What one generation's run talks to: the worker (and its fallback for CUDA_OOM), the bucket, the result
    publisher, and where each async worker call id goes once submitted (None: nowhere, nothing to resume)."""

    worker: WorkerClient
    storage: ObjectStore
    events: ResultPublisher
    fallback: WorkerClient | None = None
    calls: CallRecorder | None = None


def utc_now() -> datetime:
    """The wall clock, aware (deadlines are compared with it)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Timing:
    """Where the use case reads the time, sleeps between attempts and draws its jitter (fakes in tests)."""

    clock: Callable[[], datetime] = utc_now
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = random.random


@dataclass(frozen=True)
class GenerationConfig:
    """The deployment's bounds on one generation.

    `limits`: attempts, backoff and the retry windows (retries.RetryLimits). `lora_url_ttl_seconds`: how long each
    presigned LoRA URL lives. `worker_timeout_seconds`: the longest one worker call may take (the deadline may cut it
    shorter). `budget`: content's bounds on a generation (contracts.budget): a request over them is failed with
    INVALID_REQUEST without calling the worker, whoever published it. `secrets`: what logs and result events never
    show. `canceled_memory`: how many canceled ids are remembered (cancels.CancelMemory)."""

    limits: RetryLimits
    lora_url_ttl_seconds: int
    worker_timeout_seconds: float
    budget: GenerationBudget = field(default_factory=GenerationBudget)
    secrets: Sequence[str] = ()
    canceled_memory: int = CANCELED_MEMORY
