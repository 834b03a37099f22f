"""Every retry decision of the gateway and its timing, pure: over the attempt history, never doing I/O or sleeping.

What is tried again, how and after how long: a failed attempt on the worker (`decide_retry`: its rule, backoff,
the retry windows past the attempts limit, the fallback after CUDA_OOM, the deadline), a job taken over after a crash
(`may_rerun_after_recovery`), a worker job whose polls keep failing (`poll_given_up`), a job-table write through a
database outage (`transient_retry_delay`) and the runner's claims (`claim_retry_wait`). The callers only ask.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from contracts.errors import LORA_SHA256_MISMATCH_REASON, WORKER_ERROR_RETRYABLE, GatewayErrorCode, WorkerErrorCode
from services.inference_gateway.errors import ErrorCode, GatewayFailure

# HTTP statuses (of the LoRA host, as the worker reports them) that mean "try again later".
_TRANSIENT_HTTP = {408, 425, 429}
# Reasons a WORKER_UNAVAILABLE carries when the worker did take (or may have taken) the request: a call that timed
# out, a call that cannot be resumed, a job whose polls kept failing, a redirect chain past its cap. Every other
# WORKER_UNAVAILABLE means the worker could not be reached or answered without doing the work (refused or reset
# connection, a connect timeout, 5xx or 429 without a contract body).
_NOT_UNREACHABLE_REASONS = {"timeout", "not_resumable", "poll_failed", "redirect_limit"}
# Statuses of a worker that answered about a job it lost: the work may have run; retried within the attempts only.
_LOST_JOB_STATUSES = {404, 410}
# The longest wait between two uploads of an image whose storage is down.
UPLOAD_BACKOFF_MAX_SECONDS = 30.0
# Past the attempts limit, an unreachable worker is tried again every 1, 2, 4, 8, 10, 10 … s: a restarted worker is
# found within about 10 s of being back.
UNREACHABLE_BACKOFF_MAX_SECONDS = 10.0
# A job taken over without a worker call to poll (sync mode, or lost before its call id was kept) is run again
# this many times; after that it fails (the gateway keeps stopping while it runs: it may be the cause).
MAX_RERUNS_AFTER_RECOVERY = 1
# Poll errors in a row (connection refused, 5xx) before a worker job counts as lost.
MAX_POLL_FAILURES = 3
# The longest wait between two claims of the job table while the database is failing.
CLAIM_BACKOFF_MAX_SECONDS = 30.0
# How a failed attempt may be retried: with backoff while attempts and time last; also past the attempts limit
# while the worker is unreachable, for the gateway's worker retry window (a worker restarting); once (with the
# freshly signed LoRA URL every attempt gets); or not at all.
RetryRule = Literal["retry", "retry_while_unreachable", "fresh_url_once", "never"]


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a generation gets and how long to wait between them."""

    max_attempts: int = 3
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 30.0


@dataclass(frozen=True)
class RetryWindow:
    """A failure retried past the attempts limit while it has failed for less than `seconds` since `since`."""

    since: datetime
    seconds: float
    backoff_max_seconds: float
    name: str  # "upload" or "worker": `stopped_by` is "<name>_retry_window" when the window closes


def is_retryable(code: ErrorCode) -> bool:
    """Whether another attempt can succeed: the worker contract's advice, plus the gateway's transient codes."""
    if isinstance(code, WorkerErrorCode):
        return WORKER_ERROR_RETRYABLE[code]
    return code in (GatewayErrorCode.WORKER_UNAVAILABLE, GatewayErrorCode.STORAGE_FAILED)


def retry_rule(failure: GatewayFailure) -> tuple[str, RetryRule]:
    """Why an attempt failed (a short label for the record) and how it may be retried.

    A LoRA URL refused with 401/403 (expired or bad signature) is tried once more: each attempt signs a fresh
    URL. An upload the store refused (a 4xx other than 408/425/429: a wrong key, a missing bucket) is not retried,
    unlike a storage outage. A sha256 mismatch is not retried (the object's bytes stay what they are), nor a LoRA
    host's 404 or other non-transient 4xx, nor a request the worker canceled, nor a call that outlived the
    gateway's patience: the worker was told to stop itself before it (the request's `timeout_seconds`, a grace
    earlier) and did not answer, so it may still be running, and a new attempt would run the generation twice (an
    async job given up on is canceled; a sync call's closed connection stops the local worker). Otherwise the
    contract's advice."""
    code, details = failure.code, failure.details
    if code is WorkerErrorCode.LORA_DOWNLOAD_FAILED:
        if details.get("reason") == LORA_SHA256_MISMATCH_REASON:
            return "lora_sha256_mismatch", "never"
        http_status = details.get("http_status")
        if http_status in (401, 403):
            return "lora_url_refused", "fresh_url_once"
        if isinstance(http_status, int):
            transient = http_status >= 500 or http_status in _TRANSIENT_HTTP
            return f"lora_http_{http_status}", "retry" if transient else "never"
    # A store that answered and refused (a wrong key: 403 SignatureDoesNotMatch or InvalidAccessKeyId; a missing
    # bucket; a request past the clock skew it allows): trying again changes nothing. Its outages (unreachable, 5xx,
    # 408/425/429) stay retried, over the upload window.
    storage_status = details.get("http_status")
    if (
        code is GatewayErrorCode.STORAGE_FAILED
        and isinstance(storage_status, int)
        and storage_status < 500
        and storage_status not in _TRANSIENT_HTTP
    ):
        return "storage_refused", "never"
    if code is WorkerErrorCode.GENERATION_FAILED and details.get("canceled") is True:
        return "canceled_on_worker", "never"
    if code is GatewayErrorCode.WORKER_UNAVAILABLE and details.get("reason") == "timeout":
        return "worker_timeout", "never"
    if (
        code is GatewayErrorCode.WORKER_UNAVAILABLE
        and details.get("reason") not in _NOT_UNREACHABLE_REASONS
        and details.get("status") not in _LOST_JOB_STATUSES
    ):
        return "worker_unavailable", "retry_while_unreachable"
    return code.value.lower(), "retry" if is_retryable(code) else "never"


@dataclass(frozen=True)
class AttemptRecord:
    """One failed attempt, as the failed event's `details.causes` lists it."""

    attempt: int
    code: ErrorCode
    cause: str
    fallback: bool

    def as_detail(self) -> dict[str, object]:
        record: dict[str, object] = {"attempt": self.attempt, "error_code": self.code.value, "cause": self.cause}
        if self.fallback:
            record["endpoint"] = "fallback"
        return record


def backoff_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): exponential, half of it jittered."""
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2.0 ** (attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


def is_retried(failure: GatewayFailure) -> bool:
    """Whether a failure of this kind is retried at all (the failed event's `retryable`): by backoff, or while
    the worker is unreachable."""
    return retry_rule(failure)[1] in ("retry", "retry_while_unreachable")


@dataclass(frozen=True)
class RetryLimits:
    """The deployment's bounds on retrying one generation: its attempts and backoff, and how long past the attempts
    an upload of a kept image (`upload_retry_seconds`) and an unreachable worker (`worker_retry_seconds`) are retried,
    within the deadline: storage down for a minute must not throw away a GPU run, and a worker restarting for less
    than its window fails no generation."""

    policy: RetryPolicy
    upload_retry_seconds: float = 0.0
    worker_retry_seconds: float = 0.0


@dataclass(frozen=True)
class AttemptHistory:
    """What a generation's failed attempts so far say about the next one."""

    # Attempts allowed (the policy's; one more once the fallback gets its try).
    limit: int
    records: tuple[AttemptRecord, ...] = ()
    # Whether the attempts now go to the fallback endpoint.
    on_fallback: bool = False
    # Since when the upload of the image made (and kept) has been failing; since when the worker is unreachable.
    upload_failing_since: datetime | None = None
    unreachable_since: datetime | None = None


@dataclass(frozen=True)
class RetryDecision:
    """What follows a failed attempt: another one after `delay` seconds (on the fallback when `to_fallback`), or
    none (`delay` None; `stopped_by` says why when the failure does not say it already)."""

    history: AttemptHistory
    cause: str
    delay: float | None
    stopped_by: str | None = None
    to_fallback: bool = False


def decide_retry(
    failure: GatewayFailure,
    attempt: int,
    history: AttemptHistory,
    *,
    limits: RetryLimits,
    image_kept: bool,
    fallback_available: bool,
    deadline: datetime,
    now: datetime,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Whether and when failed attempt `attempt` is tried again, and the history with it recorded.

    `image_kept`: the image was made and kept (the failure is its upload's: the next attempt only repeats that)."""
    cause, rule = retry_rule(failure)
    history = replace(
        history,
        records=(*history.records, AttemptRecord(attempt, failure.code, cause, history.on_fallback)),
        upload_failing_since=history.upload_failing_since
        or (now if failure.code is GatewayErrorCode.STORAGE_FAILED and image_kept else None),
        unreachable_since=history.unreachable_since or (now if rule == "retry_while_unreachable" else None),
    )
    if fallback_takes(
        failure, on_fallback=history.on_fallback, available=fallback_available, now=now, deadline=deadline
    ):
        # One more attempt, on the larger GPU, whatever the attempts left; at once (another machine).
        moved = replace(history, on_fallback=True, limit=max(history.limit, attempt + 1))
        return RetryDecision(moved, cause, 0.0, to_fallback=True)
    window = retry_window(failure, rule, history, limits)
    delay, stopped_by = retry_delay(
        failure, rule, attempt, history.records, history.limit, deadline, now, limits.policy, rand, window
    )
    return RetryDecision(history, cause, delay, stopped_by)


def fallback_takes(
    failure: GatewayFailure, *, on_fallback: bool, available: bool, now: datetime, deadline: datetime
) -> bool:
    """Whether the next attempt goes to the fallback endpoint: after a CUDA_OOM on the primary, time left."""
    return available and not on_fallback and failure.code is WorkerErrorCode.CUDA_OOM and now < deadline


def retry_window(
    failure: GatewayFailure, rule: RetryRule, history: AttemptHistory, limits: RetryLimits
) -> RetryWindow | None:
    """The window in which this failure is retried past the attempts limit, if it has one."""
    if history.upload_failing_since is not None and failure.code is GatewayErrorCode.STORAGE_FAILED:
        return RetryWindow(
            history.upload_failing_since, limits.upload_retry_seconds, UPLOAD_BACKOFF_MAX_SECONDS, "upload"
        )
    if rule == "retry_while_unreachable" and history.unreachable_since is not None:
        return RetryWindow(
            history.unreachable_since, limits.worker_retry_seconds, UNREACHABLE_BACKOFF_MAX_SECONDS, "worker"
        )
    return None


def retry_delay(
    failure: GatewayFailure,
    rule: RetryRule,
    attempt: int,
    records: tuple[AttemptRecord, ...],
    limit: int,
    deadline: datetime,
    now: datetime,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
    window: RetryWindow | None = None,
) -> tuple[float | None, str | None]:
    """Seconds to wait before the next attempt, or None when this failure is final, with why (`stopped_by`; None
    when the failure says it already).

    Past `limit`, a failure with a retry `window` (an upload of a kept image, an unreachable worker) is retried
    while it has been failing for less than the window's length, with its own backoff (1, 2, 4 … s up to the
    window's cap): the GPU work is done and only the storage has to come back, or the worker is restarting."""
    if failure.details.get("stopped_by") == "deadline":
        return None, None  # the call used the time left until the deadline
    if rule == "never":
        return None, "not_retryable"
    if rule == "fresh_url_once" and sum(r.cause == records[-1].cause for r in records) > 1:
        return None, "refused_again_with_a_fresh_url"
    if window is not None and attempt >= limit:
        failing_for = (now - window.since).total_seconds()
        beyond = attempt - limit  # attempts past the limit so far
        delay = min(window.backoff_max_seconds, 2.0**beyond) * (0.5 + rand() / 2)
        if failing_for + delay > window.seconds:
            return None, f"{window.name}_retry_window" if window.seconds else "max_attempts"
    elif attempt >= limit:
        return None, "max_attempts"
    else:
        delay = backoff_delay(attempt, policy, rand)
    if delay >= (deadline - now).total_seconds():
        return None, "deadline"
    return delay, None


def may_rerun_after_recovery(*, recoveries: int, attempts: int, call_kept: bool) -> bool:
    """Whether a job taken over after its runner stopped may run again. One with a worker call to poll always may
    (nothing runs twice); one without runs again MAX_RERUNS_AFTER_RECOVERY times once it had started."""
    return call_kept or not attempts or recoveries <= MAX_RERUNS_AFTER_RECOVERY


def poll_given_up(failures: int, failing_for_seconds: float, outage_seconds: float) -> bool:
    """Whether the polls of a submitted worker job have failed long enough (`outage_seconds`, and at least
    MAX_POLL_FAILURES in a row) to give the call up: the job exists, and submitting again would run it twice."""
    return failures >= MAX_POLL_FAILURES and failing_for_seconds >= outage_seconds


def transient_retry_delay(failures: int, max_delay: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before a job-table write is tried again after its `failures`-th transient database error in a row:
    0.5, 1, 2 … s up to `max_delay`, the lower half of it jittered (a result already made must not be lost)."""
    return float(min(max_delay, 0.25 * 2**failures) * (0.5 + rand() / 2))


def claim_retry_wait(failures: int, poll_seconds: float) -> float:
    """Seconds before the runner looks for jobs again: its poll interval, doubled per failed claim in a row up to
    CLAIM_BACKOFF_MAX_SECONDS (a database that is down is not hammered)."""
    return poll_seconds if failures == 0 else min(CLAIM_BACKOFF_MAX_SECONDS, poll_seconds * 2**failures)
