"""In-process job queue for the local worker's async mode: submit returns a call id, poll returns the result,
cancel stops a job (a pending one never runs, a running one stops at its next denoising step)."""

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from contracts.worker import JobState, WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget
from gpu.engine.errors import is_canceled, request_canceled

Outcome = WorkerSuccess | WorkerError
# What a cancel found: stopped before it ran, asked to stop at its next step, or already over (the outcome stands).
CancelState = Literal["canceled", "canceling", "completed", "failed"]


@dataclass
class _Job:
    future: "Future[Outcome]"
    created: float
    budget: RequestBudget
    request_id: str | None


class QueueFullError(RuntimeError):
    """The queue holds as many unfinished jobs as it takes: try again later (HTTP 429)."""


class JobQueue:
    """Runs jobs one at a time (the engine serves one request at a time) and keeps results for a while.

    `executor`: the one-thread executor the engine serves on (gpu/serve/lifecycle.py), shared with the sync requests, so
    one thread runs every request; without one the queue keeps a thread of its own.

    Each job's budget starts at submit: the time it waits in the queue counts against its timeout. At most
    `max_pending` jobs wait or run at once (a submit past it is refused, never queued without bound); finished
    ones are kept `ttl_seconds`, and at most `max_jobs` in all."""

    def __init__(
        self,
        run: Callable[[WorkerRequest, RequestBudget], Outcome],
        max_jobs: int = 1000,
        ttl_seconds: float = 3600.0,
        max_pending: int = 64,
        executor: Executor | None = None,
    ) -> None:
        self._run = run
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self.max_jobs = max_jobs
        self.ttl_seconds = ttl_seconds
        self.max_pending = max_pending

    def submit(self, request: WorkerRequest) -> str:
        """Queue a job; its call id. QueueFullError when `max_pending` jobs are unfinished already."""
        call_id = "fc-" + uuid.uuid4().hex
        budget = RequestBudget(request.timeout_seconds)
        with self._lock:
            if sum(not job.future.done() for job in self._jobs.values()) >= self.max_pending:
                raise QueueFullError(f"{self.max_pending} jobs are waiting or running; try again later")
            future = self._executor.submit(self._run, request, budget)
            self._jobs[call_id] = _Job(future, time.monotonic(), budget, request.request_id)
            self._expire()
        return call_id

    def poll(self, call_id: str) -> tuple[JobState, Outcome | None] | None:
        """None for an unknown (or expired) id; otherwise the state and, when done, the outcome."""
        with self._lock:
            job = self._jobs.get(call_id)
        if job is None:
            return None
        if not job.future.done():
            return ("running" if job.future.running() else "pending"), None
        outcome = self._outcome(job)
        return ("completed" if isinstance(outcome, WorkerSuccess) else "failed"), outcome

    def future(self, call_id: str) -> "Future[Outcome] | None":
        """The job's future, to wait on (GET /jobs/{id}?wait=); None for an unknown id."""
        with self._lock:
            job = self._jobs.get(call_id)
        return job.future if job is not None else None

    def cancel(self, call_id: str) -> CancelState | None:
        """Stop a job: None for an unknown id. A pending job is dropped (it never runs); a running one is asked
        to stop at its next step and ends with the cancel error; a finished one keeps its outcome."""
        with self._lock:
            job = self._jobs.get(call_id)
        if job is None:
            return None
        if not job.future.done():
            job.budget.cancel("job canceled")
            # A job the executor has not started is dropped here; if it just started, the budget stops it.
            if job.future.cancel():
                return "canceled"
            if not job.future.done():
                return "canceling"
        outcome = self._outcome(job)
        if isinstance(outcome, WorkerSuccess):
            return "completed"
        return "canceled" if is_canceled(outcome) else "failed"

    @staticmethod
    def _outcome(job: _Job) -> Outcome:
        if job.future.cancelled():
            return request_canceled(job.budget.cancel_reason or "job canceled", started=False).to_error(job.request_id)
        return job.future.result()

    def _expire(self) -> None:
        # Finished jobs older than the TTL go first; past max_jobs, the oldest finished ones go too.
        now = time.monotonic()
        for call_id, job in list(self._jobs.items()):
            too_many = len(self._jobs) > self.max_jobs
            if job.future.done() and (too_many or now - job.created > self.ttl_seconds):
                del self._jobs[call_id]

    def shutdown(self) -> None:
        # Running jobs stop at their next step; pending ones are dropped.
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.future.done():
                job.budget.cancel("worker shutting down")
                job.future.cancel()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
