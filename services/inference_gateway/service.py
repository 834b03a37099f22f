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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import ValidationError

from contracts.budget import GenerationBudget, budget_refusal
from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import (
    EventPayload,
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
from services.inference_gateway.retries import (
    AttemptRecord,
    RetryPolicy,
    RetryRule,
    RetryWindow,
    backoff_delay,
    retry_rule,
)
from services.inference_gateway.sanitize import sanitize_details, sanitize_text

log = logging.getLogger(__name__)

# The worker gets the time left until the deadline; the HTTP call waits this much longer for its answer.
RESPONSE_GRACE_SECONDS = 15.0
# The longest wait between two uploads of an image whose storage is down.
UPLOAD_BACKOFF_MAX_SECONDS = 30.0
# Past the attempts limit, an unreachable worker is tried again every 1, 2, 4, 8, 10, 10 … s: a restarted worker is
# found within about 10 s of being back.
UNREACHABLE_BACKOFF_MAX_SECONDS = 10.0
# How many recently canceled generation ids the gateway remembers (oldest forgotten first).
CANCELED_MEMORY = 10_000
DEFAULT_BUDGET = GenerationBudget()


OnCall = Callable[[str], Awaitable[None]]


class WorkerClient(Protocol):
    """Runs one attempt on the worker (provider.ModalWorkerClient)."""

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
    """Keeps the worker call of a generation's current attempt (jobs.JobStore via runner.JobEvents)."""

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
    """Publishes one event and returns once the broker confirmed it."""

    async def publish(self, payload: EventPayload, *, generation_id: str, traceparent: str | None) -> None: ...


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
        limit = self._policy.max_attempts
        worker = self._worker
        records: list[AttemptRecord] = []
        png: CheckedPng | None = None
        success: WorkerSuccess | None = None
        # Since when the upload of the image made (and kept) has been failing; since when the worker is unreachable.
        upload_failing_since: datetime | None = None
        unreachable_since: datetime | None = None
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
                    started_at = resume.call_started_at or self._clock()
                    success, png = await self._generate(request, worker, attempt, traceparent, resumed=call)
                elif png is None or success is None:
                    # An image whose upload failed is kept: the next attempt only repeats the upload.
                    started_at = self._clock()
                    success, png = await self._generate(request, worker, attempt, traceparent)
                await self._store(generation_id, png)
            except GatewayFailure as failure:
                cause, rule = retry_rule(failure)
                records.append(AttemptRecord(attempt, failure.code, cause, worker is not self._worker))
                if failure.code is GatewayErrorCode.STORAGE_FAILED and png is not None and upload_failing_since is None:
                    upload_failing_since = self._clock()
                if rule == "retry_while_unreachable" and unreachable_since is None:
                    unreachable_since = self._clock()
                delay: float | None
                if self._fallback_takes(failure, worker, request.deadline):
                    assert self._fallback is not None
                    # One more attempt, on the larger GPU, whatever the attempts left; at once (another machine).
                    worker, limit, delay = self._fallback, max(limit, attempt + 1), 0.0
                    self._metrics.inc(m.FALLBACKS)
                    log.warning(
                        "generation %s attempt %d: CUDA_OOM; next attempt on the fallback", generation_id, attempt
                    )
                else:
                    window = self._retry_window(failure, rule, upload_failing_since, unreachable_since)
                    delay = self._retry_delay(failure, rule, attempt, records, limit, request.deadline, window)
                if delay is None:
                    return await self._fail(
                        request, failure, attempts=attempt, traceparent=traceparent, records=records
                    )
                log.warning(
                    "generation %s attempt %d failed with %s (%s: %s); retrying in %.2fs",
                    generation_id,
                    attempt,
                    failure.code.value,
                    cause,
                    sanitize_text(failure.message, self._secrets),
                    delay,
                )
                self._metrics.inc(m.RETRIES, cause=cause)
                await self._sleep(delay)
                continue
            return await self._complete(request, success, png, attempt, traceparent, started_at)

    def _fallback_takes(self, failure: GatewayFailure, worker: WorkerClient, deadline: datetime) -> bool:
        """Whether the next attempt goes to the fallback endpoint: after a CUDA_OOM on the primary, time left."""
        return (
            self._fallback is not None
            and worker is self._worker
            and failure.code is WorkerErrorCode.CUDA_OOM
            and self._clock() < deadline
        )

    def _retry_window(
        self,
        failure: GatewayFailure,
        rule: RetryRule,
        upload_failing_since: datetime | None,
        unreachable_since: datetime | None,
    ) -> RetryWindow | None:
        """The window in which this failure is retried past the attempts limit, if it has one."""
        if upload_failing_since is not None and failure.code is GatewayErrorCode.STORAGE_FAILED:
            return RetryWindow(upload_failing_since, self._upload_retry, UPLOAD_BACKOFF_MAX_SECONDS, "upload")
        if rule == "retry_while_unreachable" and unreachable_since is not None:
            return RetryWindow(unreachable_since, self._worker_retry, UNREACHABLE_BACKOFF_MAX_SECONDS, "worker")
        return None

    def _retry_delay(
        self,
        failure: GatewayFailure,
        rule: RetryRule,
        attempt: int,
        records: Sequence[AttemptRecord],
        limit: int,
        deadline: datetime,
        window: RetryWindow | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when this failure is final (`stopped_by` says why).

        Past `limit`, a failure with a retry `window` (an upload of a kept image, an unreachable worker) is retried
        while it has been failing for less than the window's length, with its own backoff (1, 2, 4 … s up to the
        window's cap): the GPU work is done and only the storage has to come back, or the worker is restarting."""
        if failure.details.get("stopped_by") == "deadline":
            return None  # the call used the time left until the deadline
        if rule == "never":
            failure.details.setdefault("stopped_by", "not_retryable")
            return None
        if rule == "fresh_url_once" and sum(r.cause == records[-1].cause for r in records) > 1:
            failure.details.setdefault("stopped_by", "refused_again_with_a_fresh_url")
            return None
        if window is not None and attempt >= limit:
            failing_for = (self._clock() - window.since).total_seconds()
            beyond = attempt - limit  # attempts past the limit so far
            delay = min(window.backoff_max_seconds, 2.0**beyond) * (0.5 + self._rand() / 2)
            if failing_for + delay > window.seconds:
                failure.details.setdefault(
                    "stopped_by", f"{window.name}_retry_window" if window.seconds else "max_attempts"
                )
                return None
        elif attempt >= limit:
            failure.details.setdefault("stopped_by", "max_attempts")
            return None
        else:
            delay = backoff_delay(attempt, self._policy, self._rand)
        left = (deadline - self._clock()).total_seconds()
        if delay >= left:
            failure.details.setdefault("stopped_by", "deadline")
            return None
        return delay

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
            retryable=retry_rule(failure)[1] in ("retry", "retry_while_unreachable"),
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
