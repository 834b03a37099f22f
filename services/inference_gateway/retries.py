"""Retry decisions (pure): which failed attempts are tried again, how, and after how long."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
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
