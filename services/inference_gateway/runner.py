"""The job runner: claims jobs from the table, runs each through the service, keeps their leases, stops canceled
ones, and on shutdown hands the unfinished ones back for the next runner to resume.

Nothing here holds a broker message: a request is acked once its job is recorded (consumers.py), so RabbitMQ's
delivery timeout never meets a long generation, and the runner takes jobs at its own pace (`concurrency`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from contracts.errors import GatewayErrorCode
from contracts.events import GenerationCompleted, GenerationFailed
from logsafe.logs import generation_context
from services.common.app.periodic import pause
from services.common.observability import telemetry
from services.common.persistence.db import TRANSIENT_DB_ERRORS
from services.inference_gateway import metrics as m
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.jobs import CancelOutcome, ClaimedJob, JobStore, LeaseLostError, retry_transient
from services.inference_gateway.ports import Resumption
from services.inference_gateway.retries import claim_retry_wait, may_rerun_after_recovery
from services.inference_gateway.service import GenerationService

log = logging.getLogger(__name__)


class JobRunner:
    """Runs up to `concurrency` jobs at once from the job table."""

    def __init__(
        self,
        store: JobStore,
        service: GenerationService,
        *,
        concurrency: int,
        lease_seconds: float,
        metrics: m.Metrics,
        poll_seconds: float = 1.0,
        retention: timedelta = timedelta(days=7),
        sweep_every_seconds: float = 600.0,
        backlog_every_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._service = service
        self._concurrency = concurrency
        self._renew_every = lease_seconds / 3
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._retention = retention
        self._sweep_every = sweep_every_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._backlog_every = backlog_every_seconds
        # Queued or running jobs of every runner, as last counted (None before the first count).
        self.open_jobs: int | None = None
        metrics.service.gauge(
            m.JOBS_OPEN,
            lambda: [] if self.open_jobs is None else [(float(self.open_jobs), {})],
            "queued or running jobs in the job table, all replicas (the same count from each)",
        )

    def notify(self) -> None:
        """Look for jobs now (a request was just recorded)."""
        self._wake.set()

    def running(self) -> list[str]:
        """The generations this runner is running now."""
        return list(self._tasks)

    async def cancel(self, generation_id: str) -> CancelOutcome:
        """Record a cancel in the table (every replica sees it) and stop the job if it runs here."""
        outcome = await self._store.cancel(generation_id)
        # Remembered in this process too, and a job running here is stopped now rather than at its next renewal.
        self._service.note_canceled(generation_id)
        return outcome

    @contextlib.asynccontextmanager
    async def running_jobs(self, *, drain_seconds: float = 10.0) -> AsyncIterator[JobRunner]:
        """Claim and run jobs in the background; on exit stop claiming, give running jobs `drain_seconds` to
        finish, then stop the rest and release them (their async worker calls stay running, to be resumed)."""
        stop = asyncio.Event()
        loops = [
            asyncio.create_task(self._claim_loop(stop), name="job-claims"),
            asyncio.create_task(self._renew_loop(stop), name="job-leases"),
        ]
        try:
            yield self
        finally:
            stop.set()
            self._wake.set()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._drain(drain_seconds)

    async def _drain(self, drain_seconds: float) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_seconds)
            if pending:
                self._stopping = True
                self._service.keep_worker_jobs_on_cancel()
                left = [gid for gid, task in self._tasks.items() if task in pending]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                try:
                    await self._store.release(left)
                    log.info("released %d unfinished job(s) for the next gateway: %s", len(left), ", ".join(left))
                except TRANSIENT_DB_ERRORS as error:
                    log.warning("could not release %d job(s) (%s): taken over when their leases end", len(left), error)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        next_sweep = asyncio.get_running_loop().time() + self._sweep_every
        next_count = 0.0
        while not stop.is_set():
            self._wake.clear()
            if asyncio.get_running_loop().time() >= next_count:
                next_count = asyncio.get_running_loop().time() + self._backlog_every
                await self._count_backlog()
            try:
                for job in await self._store.claim(self._concurrency - len(self._tasks)):
                    self._start(job)
                failures = 0
            except TRANSIENT_DB_ERRORS as error:
                failures += 1
                log.warning("claiming jobs failed (%s); retrying", type(error).__name__)
            if asyncio.get_running_loop().time() >= next_sweep:
                next_sweep += self._sweep_every
                await self._sweep()

            wait = claim_retry_wait(failures, self._poll_seconds)
            await pause(stop, wait, self._wake)

    async def _count_backlog(self) -> None:
        try:
            self.open_jobs = await self._store.count_open()
        except TRANSIENT_DB_ERRORS as error:
            log.warning("counting open jobs failed (%s)", type(error).__name__)

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self._renew_every)
            if stop.is_set() or not self._tasks:
                continue
            try:
                statuses = await self._store.renew(list(self._tasks))
            except TRANSIENT_DB_ERRORS as error:
                log.warning("renewing job leases failed (%s); retrying", type(error).__name__)
                continue
            for generation_id, status in statuses.items():
                task = self._tasks.get(generation_id)
                if task is None:
                    continue
                if status.cancel_requested:
                    self._service.note_canceled(generation_id)  # canceled through another replica
                elif not status.held:
                    log.warning("job %s was taken over by another runner; stopping it here", generation_id)
                    task.cancel()

    def _start(self, job: ClaimedJob) -> None:
        if job.generation_id in self._tasks:
            return  # still running here: its lease had run out during a database outage, and is ours again
        if job.recovered:
            self._metrics.inc(m.JOBS_RECOVERED)
            log.info(
                "job %s taken over after its runner stopped (attempt %d, %s)",
                job.generation_id,
                job.attempts,
                f"polling worker call {job.call.call_id}" if job.call else "no worker call to poll",
            )
        elif job.attempts == 0:
            waited = (datetime.now(UTC) - job.request.requested_at).total_seconds()
            self._metrics.observe(m.QUEUE_WAIT, waited)
        task = asyncio.create_task(self._run(job), name=f"job {job.generation_id}")
        self._tasks[job.generation_id] = task
        task.add_done_callback(lambda _: self._finished(job.generation_id))

    def _finished(self, generation_id: str) -> None:
        self._tasks.pop(generation_id, None)
        self._wake.set()  # a slot is free

    async def _run(self, job: ClaimedJob) -> None:
        attributes = {"vixen.generation_id": job.generation_id, "vixen.recovered": str(job.recovered).lower()}
        # The job's span continues the trace its request came with (the gateway's consume of it).
        with (
            telemetry.continued_span("run generation", job.traceparent, attributes) as span,
            generation_context(job.generation_id),
        ):
            outcome = await self._run_job(job)
            if isinstance(outcome, GenerationFailed):
                telemetry.mark_error(span, outcome.error_code, outcome.error)

    async def _run_job(self, job: ClaimedJob) -> GenerationCompleted | GenerationFailed | None:
        generation_id = job.generation_id
        try:
            rerun = may_rerun_after_recovery(
                recoveries=job.recoveries, attempts=job.attempts, call_kept=job.call is not None
            )
            if job.recovered and not rerun:
                failure = GatewayFailure(
                    GatewayErrorCode.WORKER_UNAVAILABLE,
                    "the gateway stopped while running this generation more than once; not run again",
                    {"recoveries": job.recoveries, "stopped_by": "gateway_restarts"},
                )
                return await self._service.fail_without_running(
                    job.request, failure, attempts=job.attempts, traceparent=job.traceparent
                )
            resume = None
            if job.recovered:
                resume = Resumption(job.attempts, job.call, job.attempt_started_at if job.call else None)
            result = await self._service.handle(job.request, traceparent=job.traceparent, resume=resume)
            if result is None:
                await self._close_canceled(generation_id)
            return result
        except LeaseLostError:
            # Canceled meanwhile (then closed here), or taken over by another runner (then nothing to do).
            await self._close_canceled(generation_id)
        except asyncio.CancelledError:
            if not self._stopping:
                log.info("job %s stopped here", generation_id)
            raise
        except Exception:
            log.exception("job %s: unexpected error; released for another runner", generation_id)
            with contextlib.suppress(*TRANSIENT_DB_ERRORS):
                await self._store.release([generation_id])
        return None

    async def _close_canceled(self, generation_id: str) -> None:
        if await retry_transient(f"job {generation_id}: closing", lambda: self._store.close_canceled(generation_id)):
            log.info("job %s canceled", generation_id)

    async def _sweep(self) -> None:
        try:
            removed = await self._store.sweep(self._retention)
        except TRANSIENT_DB_ERRORS as error:
            log.warning("sweeping old jobs failed (%s)", type(error).__name__)
            return
        if removed:
            log.info("removed %d finished job(s) older than %s", removed, self._retention)
