"""Properties of the gateway's retry decisions: backoff is non-negative, bounded by the policy's max, jittered
within its upper half and growing with the attempt; a retry is only ever granted for a retryable cause."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contracts.errors import LORA_SHA256_MISMATCH_REASON, GatewayErrorCode, WorkerErrorCode
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.retries import RetryPolicy, backoff_delay, is_retryable, retry_rule
from tests.support.properties import bounded

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 20),
    backoff_base_seconds=st.floats(0.0, 60.0),
    backoff_max_seconds=st.floats(0.0, 600.0),
)
unit_draws = st.floats(0.0, 1.0, exclude_max=True)
codes = st.sampled_from([*WorkerErrorCode, *GatewayErrorCode])
details = st.fixed_dictionaries(
    {},
    optional={
        "reason": st.sampled_from([LORA_SHA256_MISMATCH_REASON, "timeout", "redirect_limit", "connect", "other"]),
        "http_status": st.integers(100, 599) | st.none() | st.text(max_size=3),
        "canceled": st.booleans(),
    },
)


@bounded(500)
@given(attempt=st.integers(1, 200), policy=policies, draw=unit_draws)
def test_backoff_is_bounded_non_negative_and_jittered_within_half(
    attempt: int, policy: RetryPolicy, draw: float
) -> None:
    # Guards: a wait longer than the policy's max (a generation outliving its deadline while idle), a negative
    # wait (asyncio.sleep returns at once: a hot retry loop), or jitter outside [ceiling/2, ceiling] (synchronised
    # retries hammering a recovering worker, or waits far shorter than the backoff promises).
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2.0 ** (attempt - 1))
    delay = backoff_delay(attempt, policy, rand=lambda: draw)
    assert 0.0 <= delay <= policy.backoff_max_seconds
    assert ceiling / 2 <= delay <= ceiling


@bounded(300)
@given(attempt=st.integers(1, 100), policy=policies, draw=unit_draws)
def test_backoff_never_shrinks_as_attempts_grow(attempt: int, policy: RetryPolicy, draw: float) -> None:
    # Guards: an exponent that overflows or wraps so that a later attempt waits less than an earlier one.
    assert backoff_delay(attempt + 1, policy, rand=lambda: draw) >= backoff_delay(attempt, policy, rand=lambda: draw)


@bounded(500)
@given(code=codes, details=details)
def test_a_retry_is_granted_only_for_a_retryable_cause(
    code: WorkerErrorCode | GatewayErrorCode, details: dict[str, object]
) -> None:
    # Guards: retrying what cannot succeed (a sha256 mismatch, a LoRA host's 404, a request the worker canceled:
    # wasted GPU time and a late failure, an upload the store refused) and never retrying a bad signature once
    # with a fresh URL.
    cause, rule = retry_rule(GatewayFailure(code, "failed", details))
    assert cause
    http_status = details.get("http_status")
    if code is WorkerErrorCode.LORA_DOWNLOAD_FAILED and details.get("reason") == LORA_SHA256_MISMATCH_REASON:
        assert rule == "never"
    elif code is WorkerErrorCode.LORA_DOWNLOAD_FAILED and http_status in (401, 403):
        assert rule == "fresh_url_once"
    elif code is WorkerErrorCode.LORA_DOWNLOAD_FAILED and isinstance(http_status, int):
        assert (rule == "retry") == (http_status >= 500 or http_status in (408, 425, 429))
    elif code is WorkerErrorCode.GENERATION_FAILED and details.get("canceled") is True:
        assert rule == "never"
    elif code is GatewayErrorCode.STORAGE_FAILED and isinstance(http_status, int):
        # The store answered: a refusal (a wrong key's 403) is never retried, an outage (5xx, 408/425/429) is.
        assert (rule == "retry") == (http_status >= 500 or http_status in (408, 425, 429))
    elif code is GatewayErrorCode.WORKER_UNAVAILABLE:
        # Retried past the attempts limit only when the worker surely did not run it (it was not reached).
        reason, status = details.get("reason"), details.get("status")
        may_have_run = reason in ("not_resumable", "poll_failed", "redirect_limit") or status in (404, 410)
        if reason == "timeout":
            assert rule == "never"  # it outlived the gateway's patience and may still run: never submitted again
        else:
            assert rule == ("retry" if may_have_run else "retry_while_unreachable")
    else:
        assert rule == ("retry" if is_retryable(code) else "never")
    # Whatever the details say, a cause the contract calls permanent (a bad LoRA file, an invalid request) is
    # never retried: details can only narrow the contract's advice, never widen it.
    if not is_retryable(code):
        assert rule == "never"
