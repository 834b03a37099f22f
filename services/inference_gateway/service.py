"""The gateway's use case: one generation.requested → worker attempts → stored PNG → one result event.

This module assembles the use case and runs its flow: a request canceled before it starts is skipped, one past its
deadline or over the budget is failed without calling the worker, any other runs its attempts (attempts.py: the
worker calls, retries.py deciding each retry, results.py storing the image and publishing the result) as a task a
cancel can stop (cancels.py). I/O goes through ports.py; the job runner (runner.py) says which generation to run
and, for a job taken over after a crash, where its previous runner left it (`Resumption`).
"""

from __future__ import annotations

import asyncio
import logging

from contracts.budget import budget_refusal
from contracts.errors import WorkerErrorCode
from contracts.events import GenerationCompleted, GenerationFailed, GenerationRequested
from services.inference_gateway import metrics as m
from services.inference_gateway.attempts import Attempts
from services.inference_gateway.cancels import CancelMemory
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, Resumption, Timing
from services.inference_gateway.results import ResultSteps

log = logging.getLogger(__name__)


class GenerationService:
    """Handles generation.requested: attempts on the worker, then stores the PNG and reports the result.

    Cancel (generation.canceled, `note_canceled`): a request whose cancel is remembered (cancels.CancelMemory) is
    not started; a request running in this process is cancelled (its asyncio task), which stops the worker too
    (see worker_client/http.py), and publishes nothing. The job table (jobs.py, runner.py) is what every replica and
    a restart see.
    """

    def __init__(
        self, ports: GatewayPorts, config: GenerationConfig, metrics: m.Metrics, timing: Timing | None = None
    ) -> None:
        self._ports = ports
        self._config = config
        self._metrics = metrics
        self._timing = timing or Timing()
        self._cancels = CancelMemory(config.canceled_memory)
        self._results = ResultSteps(ports.storage, ports.events, metrics, config.secrets)
        self._attempts = Attempts(ports, config, metrics, self._timing, self._results)

    def note_canceled(self, generation_id: str) -> None:
        """Remember that a generation was canceled, so that its request is not run if it comes later, and stop
        it if it is running here: its task is cancelled, and with it the worker call."""
        self._metrics.inc(m.CANCELS)
        for _ in range(self._cancels.cancel(generation_id)):
            self._metrics.inc(m.CANCELED_RUNNING)
            log.info("generation %s canceled while running: stopping it and its worker call", generation_id)

    def keep_worker_jobs_on_cancel(self) -> None:
        """Shutdown: calls cancelled from now on leave their async worker jobs running, to be resumed."""
        self._ports.worker.keep_jobs_on_cancel()
        if self._ports.fallback is not None:
            self._ports.fallback.keep_jobs_on_cancel()

    def is_running(self, generation_id: str) -> bool:
        """Whether this process is running the generation now."""
        return self._cancels.is_running(generation_id)

    def was_canceled(self, generation_id: str) -> bool:
        """Whether a cancel for this generation is still remembered."""
        return self._cancels.was_canceled(generation_id)

    async def handle(
        self, request: GenerationRequested, *, traceparent: str | None = None, resume: Resumption | None = None
    ) -> GenerationCompleted | GenerationFailed | None:
        """Run the generation to a terminal result; returns the event published (completed or failed).

        None when the generation was canceled: before it started (the worker is not called) or while it ran (the
        worker call is stopped). Nothing is published then: content shows the generation canceled already.
        With `resume`, attempts go on from where a stopped runner left them (its worker call polled again).
        """
        self._metrics.inc(m.REQUESTS)
        generation_id = request.generation_id
        if self.was_canceled(generation_id):
            log.info("generation %s was canceled before it started; not run", generation_id)
            self._metrics.inc(m.SKIPPED_CANCELED)
            return None
        unrunnable = self._refusal_before_running(request)
        if unrunnable is not None:
            return await self._results.fail(
                request, unrunnable, attempts=max(1, resume.attempts if resume else 1), traceparent=traceparent
            )

        run = asyncio.create_task(self._attempts.run(request, traceparent, resume), name=f"generation {generation_id}")
        with self._cancels.running(generation_id, run):
            try:
                return await run
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if (
                    run.cancelled()
                    and self.was_canceled(generation_id)
                    and (current is None or not current.cancelling())
                ):
                    # Canceled by note_canceled, not a shutdown cancelling this handler (that one goes on).
                    log.info("generation %s canceled while running; nothing published", generation_id)
                    return None
                raise

    def _refusal_before_running(self, request: GenerationRequested) -> GatewayFailure | None:
        """Why the generation ends before any attempt (its deadline passed, or it is over the budget), or None."""
        if self._timing.clock() >= request.deadline:
            return GatewayFailure(
                WorkerErrorCode.TIMEOUT,
                "the deadline passed before the gateway could start the generation",
                {"deadline": request.deadline.isoformat(), "worker_called": False},
            )
        params = request.params
        refusal = budget_refusal(params.width, params.height, params.steps, self._config.budget)
        if refusal is None:
            return None
        log.warning("generation %s refused without running: %s", request.generation_id, refusal.message)
        fields = [name for name, _ in refusal.fields]
        return GatewayFailure(
            WorkerErrorCode.INVALID_REQUEST, refusal.message, {"fields": fields, "worker_called": False}
        )

    async def fail_without_running(
        self, request: GenerationRequested, failure: GatewayFailure, *, attempts: int, traceparent: str | None
    ) -> GenerationFailed:
        """Publish a final failure for a generation that is not run again (the runner's decision)."""
        self._metrics.inc(m.REQUESTS)
        return await self._results.fail(request, failure, attempts=max(attempts, 1), traceparent=traceparent)
