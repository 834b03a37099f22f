"""The gateway's use case: one generation.requested → worker attempts → stored PNG → one result event.

The only module that decides: whether the deadline allows an attempt, which failures are retried (by cause,
see `retry_rule`), how long to wait between attempts, when the fallback endpoint gets a try, what the result
event says, and what a cancel stops (a request not started yet is skipped, a running one is cancelled and its
worker call with it). I/O goes through the ports below; the job runner (runner.py) says which generation to run
and, for a job taken over after a crash, where its previous runner left it (`Resumption`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from pydantic import ValidationError

from contracts.budget import GenerationBudget, budget_refusal
from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import (
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationStarted,
    ImageRef,
)
from contracts.object_keys import generation_image_key
from contracts.worker import WorkerRequest, WorkerSuccess
from services.common.storage import StorageRequestError
from services.inference_gateway import metrics as m
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.images import PNG_CONTENT_TYPE, CheckedPng, InvalidImageError, decode_png
from services.inference_gateway.ports import (
    CallRecorder,
    ObjectStore,
    OnCall,
    ResultPublisher,
    Resumption,
    WorkerCall,
    WorkerClient,
)
from services.inference_gateway.retries import (
    AttemptHistory,
    AttemptRecord,
    RetryLimits,
    RetryPolicy,
    decide_retry,
    is_retried,
)
from services.inference_gateway.sanitize import sanitize_details, sanitize_text

log = logging.getLogger(__name__)

# The worker gets the time left until the deadline; the HTTP call waits this much longer for its answer.
RESPONSE_GRACE_SECONDS = 15.0
# How many recently canceled generation ids the gateway remembers (oldest forgotten first).
CANCELED_MEMORY = 10_000
DEFAULT_BUDGET = GenerationBudget()


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


def _now() -> datetime:
    return datetime.now(UTC)


class GenerationService:
    """Handles generation.requested: attempts on the worker, then stores the PNG and reports the result.

    Cancel (generation.canceled, `note_canceled`): the ids of the last `canceled_memory` canceled generations
    are remembered and a request whose id is remembered is not started; a request running in this process is
    cancelled (its asyncio task), which stops the worker too (see provider.py), and publishes nothing. The
    memory is this process's fast path: the job table (jobs.py, runner.py) is what every replica and a restart see.

    `fallback`: a second worker endpoint (a larger GPU) that gets one more attempt after a CUDA_OOM.
    `calls`: where each async worker call id goes once submitted (the job table), so that it can be resumed.
    `upload_retry_seconds`: how long the upload of an image already made keeps being retried past the attempts
    limit (storage down for a minute must not throw away a GPU run), within the deadline.
    `budget`: the deployment's bounds on one generation (content's, contracts.budget): a request over them is failed
    with INVALID_REQUEST without calling the worker, whoever published it.
    `worker_retry_seconds`: how long an unreachable worker (refused or reset connections, 5xx or 429 without a
    contract body) keeps being retried past the attempts limit, from its first such failure, within the deadline:
    a worker restarting for less than that fails no generation.
    """

    def __init__(
        self,
        worker: WorkerClient,
        storage: ObjectStore,
        events: ResultPublisher,
        *,
        policy: RetryPolicy,
        lora_url_ttl_seconds: int,
        worker_timeout_seconds: float,
        metrics: m.Metrics,
        secrets: Sequence[str] = (),
        clock: Callable[[], datetime] = _now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        canceled_memory: int = CANCELED_MEMORY,
        fallback: WorkerClient | None = None,
        calls: CallRecorder | None = None,
        upload_retry_seconds: float = 0.0,
        worker_retry_seconds: float = 0.0,
        budget: GenerationBudget = DEFAULT_BUDGET,
    ) -> None:
        self._worker = worker
        self._budget = budget
        self._calls = calls
        self._upload_retry = upload_retry_seconds
        self._worker_retry = worker_retry_seconds
        self._fallback = fallback
        self._storage = storage
        self._events = events
        self._policy = policy
        self._limits = RetryLimits(policy, upload_retry_seconds, worker_retry_seconds)
        self._lora_url_ttl = lora_url_ttl_seconds
        self._worker_timeout = worker_timeout_seconds
        self._metrics = metrics
        self._secrets = list(secrets)
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._canceled: OrderedDict[str, None] = OrderedDict()
        self._canceled_memory = canceled_memory
        # The attempts of each generation running here, to cancel (the runner runs one per generation; a direct
        # caller of handle may start two).
        self._running: dict[str, set[asyncio.Task[GenerationCompleted | GenerationFailed]]] = {}

    def note_canceled(self, generation_id: str) -> None:
        """Remember that a generation was canceled, so that its request is not run if it comes later, and stop
        it if it is running here: its task is cancelled, and with it the worker call."""
        self._metrics.inc(m.CANCELS)
        self._canceled[generation_id] = None
        self._canceled.move_to_end(generation_id)
        while len(self._canceled) > self._canceled_memory:
            self._canceled.popitem(last=False)
        for task in self._running.get(generation_id, ()):
            if task.cancel():
                self._metrics.inc(m.CANCELED_RUNNING)
                log.info("generation %s canceled while running: stopping it and its worker call", generation_id)

    def keep_worker_jobs_on_cancel(self) -> None:
        """Shutdown: calls cancelled from now on leave their async worker jobs running, to be resumed."""
        self._worker.keep_jobs_on_cancel()
        if self._fallback is not None:
            self._fallback.keep_jobs_on_cancel()

    def is_running(self, generation_id: str) -> bool:
        """Whether this process is running the generation now."""
        return bool(self._running.get(generation_id))

    def was_canceled(self, generation_id: str) -> bool:
        """Whether a cancel for this generation is still remembered."""
        return generation_id in self._canceled

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
            return await self._fail(
                request, unrunnable, attempts=max(1, resume.attempts if resume else 1), traceparent=traceparent
            )

        run = asyncio.create_task(self._attempts(request, traceparent, resume), name=f"generation {generation_id}")
        running = self._running.setdefault(generation_id, set())
        running.add(run)
        try:
            return await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if run.cancelled() and self.was_canceled(generation_id) and (current is None or not current.cancelling()):
                # Canceled by note_canceled, not a shutdown cancelling this handler (that one goes on).
                log.info("generation %s canceled while running; nothing published", generation_id)
                return None
            raise
        finally:
            running.discard(run)
            if not running:
                self._running.pop(generation_id, None)

    def _refusal_before_running(self, request: GenerationRequested) -> GatewayFailure | None:
        """Why the generation ends before any attempt (its deadline passed, or it is over the budget), or None."""
        if self._clock() >= request.deadline:
            return GatewayFailure(
                WorkerErrorCode.TIMEOUT,
                "the deadline passed before the gateway could start the generation",
                {"deadline": request.deadline.isoformat(), "worker_called": False},
            )
        refusal = budget_refusal(request.params.width, request.params.height, request.params.steps, self._budget)
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
        return await self._fail(request, failure, attempts=max(attempts, 1), traceparent=traceparent)

    async def _attempts(
        self, request: GenerationRequested, traceparent: str | None, resume: Resumption | None
    ) -> GenerationCompleted | GenerationFailed:
        """Attempts until a success is stored or a failure is final; publishes the terminal event."""
        generation_id = request.generation_id
        attempt = resume.attempts if resume else 0
        # A worker call left by a stopped runner: its result is awaited as the current attempt's.
        pending = resume.call if resume else None
        worker = self._worker
        history = AttemptHistory(limit=self._policy.max_attempts)
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
                    if call.endpoint == "fallback" and self._fallback is not None:
                        worker = self._fallback
                        history = replace(history, on_fallback=True)
                    started_at = resume.call_started_at or self._clock()
                    success, png = await self._generate(request, worker, attempt, traceparent, resumed=call)
                elif png is None or success is None:
                    # An image whose upload failed is kept: the next attempt only repeats the upload.
                    started_at = self._clock()
                    success, png = await self._generate(request, worker, attempt, traceparent)
                await self._store(generation_id, png)
            except GatewayFailure as failure:
                decision = decide_retry(
                    failure,
                    attempt,
                    history,
                    limits=self._limits,
                    image_kept=png is not None,
                    fallback_available=self._fallback is not None,
                    deadline=request.deadline,
                    now=self._clock(),
                    rand=self._rand,
                )
                history = decision.history
                if decision.stopped_by is not None:
                    failure.details.setdefault("stopped_by", decision.stopped_by)
                if decision.to_fallback:
                    assert self._fallback is not None
                    worker = self._fallback
                    self._metrics.inc(m.FALLBACKS)
                    log.warning(
                        "generation %s attempt %d: CUDA_OOM; next attempt on the fallback", generation_id, attempt
                    )
                if decision.delay is None:
                    return await self._fail(
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
                await self._sleep(decision.delay)
                continue
            return await self._complete(request, success, png, attempt, traceparent, started_at)

    async def _generate(
        self,
        request: GenerationRequested,
        worker: WorkerClient,
        attempt: int,
        traceparent: str | None,
        *,
        resumed: WorkerCall | None = None,
    ) -> tuple[WorkerSuccess, CheckedPng]:
        generation_id = request.generation_id
        left = (request.deadline - self._clock()).total_seconds()
        if left <= 0:
            raise GatewayFailure(WorkerErrorCode.TIMEOUT, "the deadline passed between attempts", {"attempt": attempt})
        budget = min(self._worker_timeout, left)
        deadline_bound = left <= self._worker_timeout
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
            if timed_out and (deadline_bound or self._clock() >= request.deadline):
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
        if success.request_id is not None and success.request_id != generation_id:
            raise GatewayFailure(
                GatewayErrorCode.INVALID_WORKER_RESPONSE, "worker answered for another request", {"attempt": attempt}
            )
        try:
            # Decoding and checking a multi-megabyte PNG takes long enough to stall every other task on the loop.
            png = await asyncio.to_thread(decode_png, success.image_base64, request.params.width, request.params.height)
        except InvalidImageError as error:
            raise GatewayFailure(GatewayErrorCode.INVALID_WORKER_RESPONSE, str(error), error.details) from None
        return success, png

    async def _call_worker(
        self, request: GenerationRequested, worker: WorkerClient, attempt: int, budget: float, traceparent: str | None
    ) -> WorkerSuccess:
        """generation.started, then a new call to the worker (its call id recorded as soon as it is known)."""
        generation_id = request.generation_id
        lora_url = await self._sign_lora(request)
        worker_request = worker_request_for(request, lora_url, budget)
        await self._events.publish(
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
        if self._calls is not None:
            calls, endpoint = self._calls, "primary" if worker is self._worker else "fallback"

            async def on_call(call_id: str) -> None:
                await calls.record_call(generation_id, WorkerCall(call_id, endpoint))

        return await worker.generate(worker_request, budget + RESPONSE_GRACE_SECONDS, on_call=on_call)

    async def _sign_lora(self, request: GenerationRequested) -> str | None:
        """A fresh short-lived URL per attempt (a retry after an expired URL gets a new one)."""
        if request.lora is None:
            return None
        try:
            return await self._storage.presign_get(request.lora.object_key, self._lora_url_ttl)
        except Exception as error:
            self._log_storage_error("could not sign the LoRA URL", request.generation_id, error)
            details = {"reason": type(error).__name__}
            raise GatewayFailure(GatewayErrorCode.STORAGE_FAILED, "could not sign the LoRA URL", details) from None

    async def _store(self, generation_id: str, png: CheckedPng) -> None:
        try:
            await self._storage.put_bytes(generation_image_key(generation_id), png.data, PNG_CONTENT_TYPE)
        except Exception as error:
            self._log_storage_error("could not store the image", generation_id, error)
            details: dict[str, object] = {
                "object_key": generation_image_key(generation_id),
                "reason": type(error).__name__,
            }
            if isinstance(error, StorageRequestError):
                # The store answered: its status decides whether trying again can help (retries.retry_rule).
                details["http_status"] = error.status
                if error.code:
                    details["s3_code"] = error.code
            raise GatewayFailure(GatewayErrorCode.STORAGE_FAILED, "could not store the image", details) from None

    def _log_storage_error(self, what: str, generation_id: str, error: Exception) -> None:
        # The cause stays out of the result event (it may name endpoints); the log keeps it, sanitized.
        log.warning(
            "generation %s: %s: %s: %s",
            generation_id,
            what,
            type(error).__name__,
            sanitize_text(str(error), self._secrets),
        )

    async def _complete(
        self,
        request: GenerationRequested,
        success: WorkerSuccess,
        png: CheckedPng,
        attempts: int,
        traceparent: str | None,
        started_at: datetime | None,
    ) -> GenerationCompleted:
        completed = GenerationCompleted(
            generation_id=request.generation_id,
            image=ImageRef(
                object_key=generation_image_key(request.generation_id),
                sha256=png.sha256,
                width=png.width,
                height=png.height,
                size_bytes=png.size_bytes,
                content_type=PNG_CONTENT_TYPE,
            ),
            generation_time_seconds=max(success.generation_time_seconds, 0.0),
            model_info=success.model_info,
            timings=success.timings,
            attempts=attempts,
            started_at=started_at,
        )
        await self._events.publish(completed, generation_id=request.generation_id, traceparent=traceparent)
        self._metrics.inc(m.COMPLETED)
        log.info(
            "generation %s completed after %d attempt(s): %s (%d bytes)",
            request.generation_id,
            attempts,
            completed.image.object_key,
            png.size_bytes,
        )
        return completed

    async def _fail(
        self,
        request: GenerationRequested,
        failure: GatewayFailure,
        *,
        attempts: int,
        traceparent: str | None,
        records: Sequence[AttemptRecord] = (),
    ) -> GenerationFailed:
        details = dict(failure.details)
        if records:
            # Every attempt's cause, oldest first (the last is this failure's).
            details["causes"] = [r.as_detail() for r in records]
        failed = GenerationFailed(
            generation_id=request.generation_id,
            error_code=failure.code.value,
            error=sanitize_text(failure.message, self._secrets) or failure.code.value,
            details=sanitize_details(details, self._secrets),
            retryable=is_retried(failure),
            attempts=attempts,
        )
        await self._events.publish(failed, generation_id=request.generation_id, traceparent=traceparent)
        self._metrics.inc(m.FAILED, error_code=failed.error_code)
        log.warning(
            "generation %s failed after %d attempt(s): %s %s",
            request.generation_id,
            attempts,
            failed.error_code,
            failed.error,
        )
        return failed
