"""One generation's attempts against the worker: each signs a fresh LoRA URL, calls (or resumes) the worker, checks
and stores the image; retries.decide_retry says after each failure whether and when the next one comes."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime

from pydantic import ValidationError

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import GenerationCompleted, GenerationFailed, GenerationRequested, GenerationStarted
from contracts.worker import WorkerRequest, WorkerSuccess
from services.inference_gateway import metrics as m
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.images import CheckedPng
from services.inference_gateway.ports import (
    GatewayPorts,
    GenerationConfig,
    OnCall,
    Resumption,
    Timing,
    WorkerCall,
    WorkerClient,
)
from services.inference_gateway.results import ResultSteps, checked_image, log_storage_error
from services.inference_gateway.retries import AttemptHistory, decide_retry
from services.inference_gateway.sanitize import sanitize_text

log = logging.getLogger(__name__)

# The worker gets the time left until the deadline; the HTTP call waits this much longer for its answer.
RESPONSE_GRACE_SECONDS = 15.0


def worker_request_for(request: GenerationRequested, lora_url: str | None, budget: float) -> WorkerRequest:
    """The worker contract's body for a generation; INVALID_REQUEST when the event does not fit it."""
    try:
        return WorkerRequest(
            prompt=request.params.prompt,
            negative_prompt=request.params.negative_prompt,
            lora_url=lora_url,
            lora_scale=request.lora.scale if request.lora else 1.0,
            width=request.params.width,
            height=request.params.height,
            steps=request.params.steps,
            cfg=request.params.cfg,
            seed=request.params.seed,
            request_id=request.generation_id,
            lora_sha256=request.lora.sha256 if request.lora else None,
            timeout_seconds=min(budget, 3600.0),
        )
    except ValidationError as error:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors(include_input=False)})
        raise GatewayFailure(
            WorkerErrorCode.INVALID_REQUEST, "the request does not fit the worker contract", {"fields": fields}
        ) from None


class Attempts:
    """Runs a generation's attempts until a success is stored or a failure is final, and publishes that."""

    def __init__(
        self, ports: GatewayPorts, config: GenerationConfig, metrics: m.Metrics, timing: Timing, results: ResultSteps
    ) -> None:
        self._ports = ports
        self._config = config
        self._metrics = metrics
        self._timing = timing
        self._results = results
        self._secrets = list(config.secrets)

    async def run(
        self, request: GenerationRequested, traceparent: str | None, resume: Resumption | None
    ) -> GenerationCompleted | GenerationFailed:
        """Attempts until a success is stored or a failure is final; publishes the terminal event."""
        generation_id = request.generation_id
        clock, fallback = self._timing.clock, self._ports.fallback
        attempt = resume.attempts if resume else 0
        # A worker call left by a stopped runner: its result is awaited as the current attempt's.
        pending = resume.call if resume else None
        worker = self._ports.worker
        history = AttemptHistory(limit=self._config.limits.policy.max_attempts)
        png: CheckedPng | None = None
        success: WorkerSuccess | None = None
        # When the attempt that made the image began (sent with the result: a consumer that applies the result
        # before generation.started still learns when the generation started running).
        started_at: datetime | None = None
        while True:
            if pending is None:
                attempt += 1
            try:
                if pending is not None:
                    assert resume is not None
                    call, pending = pending, None
                    if call.endpoint == "fallback" and fallback is not None:
                        worker, history = fallback, replace(history, on_fallback=True)
                    started_at = resume.call_started_at or clock()
                    success, png = await self._generate(request, worker, attempt, traceparent, resumed=call)
                elif png is None or success is None:
                    # An image whose upload failed is kept: the next attempt only repeats the upload.
                    started_at = clock()
                    success, png = await self._generate(request, worker, attempt, traceparent)
                await self._results.store(generation_id, png)
            except GatewayFailure as failure:
                decision = decide_retry(
                    failure,
                    attempt,
                    history,
                    limits=self._config.limits,
                    image_kept=png is not None,
                    fallback_available=fallback is not None,
                    deadline=request.deadline,
                    now=clock(),
                    rand=self._timing.rand,
                )
                history = decision.history
                if decision.stopped_by is not None:
                    failure.details.setdefault("stopped_by", decision.stopped_by)
                if decision.to_fallback and fallback is not None:
                    worker = fallback
                    self._metrics.inc(m.FALLBACKS)
                    log.warning(
                        "generation %s attempt %d: CUDA_OOM; next attempt on the fallback", generation_id, attempt
                    )
                if decision.delay is None:
                    return await self._results.fail(
                        request, failure, attempts=attempt, traceparent=traceparent, records=history.records
                    )
                log.warning(
                    "generation %s attempt %d failed with %s (%s: %s); retrying in %.2fs",
                    generation_id,
                    attempt,
                    failure.code.value,
                    decision.cause,
                    sanitize_text(failure.message, self._secrets),
                    decision.delay,
                )
                self._metrics.inc(m.RETRIES, cause=decision.cause)
                await self._timing.sleep(decision.delay)
                continue
            return await self._results.complete(request, success, png, attempt, traceparent, started_at)

    async def _generate(
        self,
        request: GenerationRequested,
        worker: WorkerClient,
        attempt: int,
        traceparent: str | None,
        *,
        resumed: WorkerCall | None = None,
    ) -> tuple[WorkerSuccess, CheckedPng]:
        """One worker call (or a resumed one's poll), bounded by the deadline, and its image checked."""
        generation_id = request.generation_id
        left = (request.deadline - self._timing.clock()).total_seconds()
        if left <= 0:
            raise GatewayFailure(WorkerErrorCode.TIMEOUT, "the deadline passed between attempts", {"attempt": attempt})
        worker_timeout = self._config.worker_timeout_seconds
        budget = min(worker_timeout, left)
        deadline_bound = left <= worker_timeout
        started = time.perf_counter()
        outcome = "ok"
        self._metrics.in_flight(+1)
        try:
            if resumed is not None:
                log.info(
                    "generation %s attempt %d: polling worker call %s again", generation_id, attempt, resumed.call_id
                )
                success = await worker.resume(resumed.call_id, budget + RESPONSE_GRACE_SECONDS)
            else:
                success = await self._call_worker(request, worker, attempt, budget, traceparent)
        except GatewayFailure as failure:
            outcome = failure.code.value
            self._metrics.inc(m.WORKER_CALLS, outcome=outcome)
            timed_out = (
                failure.code is GatewayErrorCode.WORKER_UNAVAILABLE and failure.details.get("reason") == "timeout"
            )
            if timed_out and (deadline_bound or self._timing.clock() >= request.deadline):
                # The call had the time left until the deadline and ran out of it: the generation's deadline
                # passed, which is TIMEOUT (the worker was told to stop), not an unreachable worker.
                raise GatewayFailure(
                    WorkerErrorCode.TIMEOUT,
                    "the deadline passed before the worker answered",
                    {**failure.details, "deadline": request.deadline.isoformat(), "stopped_by": "deadline"},
                ) from None
            raise
        finally:
            self._metrics.in_flight(-1)
            self._metrics.observe(m.WORKER_SECONDS, time.perf_counter() - started, outcome=outcome)
        self._metrics.inc(m.WORKER_CALLS, outcome="ok")
        if success.timings is not None and success.model_info.lora_applied:
            self._metrics.inc(m.LORA_LOADS, source=success.timings.lora_source)
        return success, await checked_image(request, success, attempt)

    async def _call_worker(
        self, request: GenerationRequested, worker: WorkerClient, attempt: int, budget: float, traceparent: str | None
    ) -> WorkerSuccess:
        """generation.started, then a new call to the worker (its call id recorded as soon as it is known)."""
        generation_id = request.generation_id
        lora_url = await self._sign_lora(request)
        worker_request = worker_request_for(request, lora_url, budget)
        await self._ports.events.publish(
            GenerationStarted(generation_id=generation_id, attempt=attempt, worker_mode=worker.mode),
            generation_id=generation_id,
            traceparent=traceparent,
        )
        log.info(
            "generation %s attempt %d: calling the worker (%s, %dx%d, %d steps, lora %s)",
            generation_id,
            attempt,
            worker.mode,
            request.params.width,
            request.params.height,
            request.params.steps,
            request.lora.object_key if request.lora else "none",
        )
        on_call: OnCall | None = None
        if self._ports.calls is not None:
            calls, endpoint = self._ports.calls, "primary" if worker is self._ports.worker else "fallback"

            async def on_call(call_id: str) -> None:
                await calls.record_call(generation_id, WorkerCall(call_id, endpoint))

        return await worker.generate(worker_request, budget + RESPONSE_GRACE_SECONDS, on_call=on_call)

    async def _sign_lora(self, request: GenerationRequested) -> str | None:
        """A fresh short-lived URL per attempt (a retry after an expired URL gets a new one)."""
        if request.lora is None:
            return None
        try:
            return await self._ports.storage.presign_get(request.lora.object_key, self._config.lora_url_ttl_seconds)
        except Exception as error:
            log_storage_error("could not sign the LoRA URL", request.generation_id, error, self._secrets)
            details = {"reason": type(error).__name__}
            raise GatewayFailure(GatewayErrorCode.STORAGE_FAILED, "could not sign the LoRA URL", details) from None
