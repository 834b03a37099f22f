"""The ports of the gateway's use case: what it calls (worker, bucket, result publisher, call recorder) and the
small records it hands across them (a worker call, where a resumed generation was left)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from contracts.events import EventPayload
from contracts.worker import WorkerRequest, WorkerSuccess

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
    """The bucket (services.common.storage.ObjectStorage)."""

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
