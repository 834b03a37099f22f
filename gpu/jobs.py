"""In-process job queue for the local worker's async mode: submit returns a call id, poll returns the result."""

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from contracts.worker import JobState, WorkerError, WorkerRequest, WorkerSuccess

Outcome = WorkerSuccess | WorkerError


@dataclass
class _Job:
    future: "Future[Outcome]"
    created: float


class JobQueue:
    """Runs jobs one at a time (the engine serves one request at a time) and keeps results for a while."""

    def __init__(
        self, run: Callable[[WorkerRequest], Outcome], max_jobs: int = 1000, ttl_seconds: float = 3600.0
    ) -> None:
        self._run = run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self.max_jobs = max_jobs
        self.ttl_seconds = ttl_seconds

    def submit(self, request: WorkerRequest) -> str:
        call_id = "fc-" + uuid.uuid4().hex
        future = self._executor.submit(self._run, request)
        with self._lock:
            self._jobs[call_id] = _Job(future, time.monotonic())
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
        outcome = job.future.result()
        return ("completed" if isinstance(outcome, WorkerSuccess) else "failed"), outcome

    def _expire(self) -> None:
        # Finished jobs older than the TTL go first; past max_jobs, the oldest finished ones go too.
        now = time.monotonic()
        for call_id, job in list(self._jobs.items()):
            too_many = len(self._jobs) > self.max_jobs
            if job.future.done() and (too_many or now - job.created > self.ttl_seconds):
                del self._jobs[call_id]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
