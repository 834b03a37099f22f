"""The gateway's retry decisions as pure functions over the attempt history: windows past the attempts limit, the
fallback after CUDA_OOM, the deadline, a re-run after a crash, lost polls, database and claim backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.retries import (
    CLAIM_BACKOFF_MAX_SECONDS,
    MAX_POLL_FAILURES,
    MAX_RERUNS_AFTER_RECOVERY,
    UNREACHABLE_BACKOFF_MAX_SECONDS,
    UPLOAD_BACKOFF_MAX_SECONDS,
    AttemptHistory,
    RetryDecision,
    RetryLimits,
    RetryPolicy,
    claim_retry_wait,
    decide_retry,
    may_rerun_after_recovery,
    poll_given_up,
    transient_retry_delay,
)
from tests.support.gateway.fakes import START

REFUSED = GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, "worker could not be reached", {"reason": "ConnectError"})
STORAGE_DOWN = GatewayFailure(GatewayErrorCode.STORAGE_FAILED, "could not store the image", {"reason": "Error"})
OOM = GatewayFailure(WorkerErrorCode.CUDA_OOM, "out of memory")


def decisions(
    failure: GatewayFailure,
    limits: RetryLimits,
    *,
    deadline_in: timedelta = timedelta(minutes=10),
    image_kept: bool = False,
    fallback_available: bool = False,
    most: int = 100,
) -> list[RetryDecision]:
    """Each decision for `failure` repeated, the clock moving by each delay, until one is final."""
    now, deadline = START, START + deadline_in
    history = AttemptHistory(limit=limits.policy.max_attempts)
    made: list[RetryDecision] = []
    for attempt in range(1, most + 1):
        decision = decide_retry(
            GatewayFailure(failure.code, failure.message, dict(failure.details)),
            attempt,
            history,
            limits=limits,
            image_kept=image_kept,
            fallback_available=fallback_available,
            deadline=deadline,
            now=now,
            rand=lambda: 1.0,
        )
        made.append(decision)
        if decision.delay is None:
            break
        history, now = decision.history, now + timedelta(seconds=decision.delay)
    return made


def delays(made: list[RetryDecision]) -> list[float]:
    return [d.delay for d in made if d.delay is not None]


def test_an_unreachable_worker_is_retried_past_the_limit_within_its_window() -> None:
    limits = RetryLimits(RetryPolicy(3, 1.0, 30.0), worker_retry_seconds=30.0)
    made = decisions(REFUSED, limits)
    # The window counts from the first failure: 1 + 2 (within the attempts), then 1 + 2 + 4 + 8 + 10 would pass 30.
    assert delays(made) == [1.0, 2.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert made[-1].stopped_by == "worker_retry_window"
    assert made[0].history.unreachable_since == START and made[-1].history.unreachable_since == START


def test_the_unreachable_backoff_is_capped() -> None:
    limits = RetryLimits(RetryPolicy(3, 1.0, 30.0), worker_retry_seconds=600.0)
    assert max(delays(decisions(REFUSED, limits, most=12))) == UNREACHABLE_BACKOFF_MAX_SECONDS


def test_an_upload_of_a_kept_image_is_retried_within_its_window_with_its_own_cap() -> None:
    limits = RetryLimits(RetryPolicy(2, 0.05, 0.2), upload_retry_seconds=120.0)
    made = decisions(STORAGE_DOWN, limits, image_kept=True)
    assert delays(made)[:7] == [0.05, 1.0, 2.0, 4.0, 8.0, 16.0, UPLOAD_BACKOFF_MAX_SECONDS]
    assert made[-1].stopped_by == "upload_retry_window"


def test_without_a_window_the_attempts_limit_stops() -> None:
    for failure, image_kept in ((REFUSED, False), (STORAGE_DOWN, True)):
        made = decisions(failure, RetryLimits(RetryPolicy(3, 1.0, 30.0)), image_kept=image_kept)
        assert len(made) == 3 and made[-1].stopped_by == "max_attempts"


def test_the_deadline_bounds_every_window() -> None:
    limits = RetryLimits(RetryPolicy(3, 1.0, 30.0), upload_retry_seconds=600.0, worker_retry_seconds=600.0)
    for failure in (REFUSED, STORAGE_DOWN):
        made = decisions(failure, limits, deadline_in=timedelta(seconds=20), image_kept=True)
        assert made[-1].stopped_by == "deadline" and sum(delays(made)) < 20.0


def test_a_failure_stopped_by_the_deadline_is_final_without_another_reason() -> None:
    failure = GatewayFailure(WorkerErrorCode.TIMEOUT, "deadline", {"stopped_by": "deadline"})
    made = decisions(failure, RetryLimits(RetryPolicy(3, 1.0, 30.0)))
    assert len(made) == 1 and made[0].delay is None and made[0].stopped_by is None


def test_a_refused_lora_url_is_retried_once_then_final() -> None:
    refused = GatewayFailure(WorkerErrorCode.LORA_DOWNLOAD_FAILED, "403", {"http_status": 403})
    made = decisions(refused, RetryLimits(RetryPolicy(5, 1.0, 30.0)))
    assert len(made) == 2 and made[-1].stopped_by == "refused_again_with_a_fresh_url"


def test_a_permanent_failure_is_final_at_once() -> None:
    made = decisions(GatewayFailure(WorkerErrorCode.LORA_LOAD_FAILED, "bad file"), RetryLimits(RetryPolicy()))
    assert len(made) == 1 and made[0].stopped_by == "not_retryable"


def test_a_cuda_oom_moves_to_the_fallback_once_at_once_with_one_more_attempt() -> None:
    made = decisions(OOM, RetryLimits(RetryPolicy(1, 1.0, 30.0)), fallback_available=True)
    assert made[0].to_fallback and made[0].delay == 0.0
    assert made[0].history.on_fallback and made[0].history.limit == 2
    # On the fallback, the record says so and no second move happens.
    assert not made[1].to_fallback and made[1].stopped_by == "max_attempts"
    assert [r.as_detail().get("endpoint") for r in made[1].history.records] == [None, "fallback"]


def test_without_a_fallback_a_cuda_oom_is_retried_as_usual() -> None:
    made = decisions(OOM, RetryLimits(RetryPolicy(2, 1.0, 30.0)))
    assert not any(d.to_fallback for d in made) and len(made) == 2


def test_no_fallback_once_the_deadline_passed() -> None:
    history = AttemptHistory(limit=3)
    decision = decide_retry(
        OOM,
        1,
        history,
        limits=RetryLimits(RetryPolicy()),
        image_kept=False,
        fallback_available=True,
        deadline=START,
        now=START,
        rand=lambda: 1.0,
    )
    assert not decision.to_fallback and decision.stopped_by == "deadline"


@pytest.mark.parametrize(
    ("recoveries", "attempts", "call_kept", "allowed"),
    [
        (MAX_RERUNS_AFTER_RECOVERY, 1, False, True),
        (MAX_RERUNS_AFTER_RECOVERY + 1, 1, False, False),
        (MAX_RERUNS_AFTER_RECOVERY + 1, 0, False, True),  # never started: nothing ran twice
        (MAX_RERUNS_AFTER_RECOVERY + 5, 2, True, True),  # a call to poll: resumed, not rerun
    ],
)
def test_a_job_taken_over_is_rerun_a_bounded_number_of_times(
    recoveries: int, attempts: int, call_kept: bool, allowed: bool
) -> None:
    assert may_rerun_after_recovery(recoveries=recoveries, attempts=attempts, call_kept=call_kept) is allowed


def test_a_worker_job_is_given_up_after_enough_failed_polls_for_long_enough() -> None:
    assert not poll_given_up(MAX_POLL_FAILURES - 1, 999.0, 0.0)
    assert poll_given_up(MAX_POLL_FAILURES, 0.0, 0.0)
    assert not poll_given_up(MAX_POLL_FAILURES + 10, 59.0, 60.0)
    assert poll_given_up(MAX_POLL_FAILURES + 10, 60.0, 60.0)


def test_database_and_claim_backoffs_grow_to_their_caps() -> None:
    assert [transient_retry_delay(n, 10.0, rand=lambda: 1.0) for n in (1, 2, 3, 6, 9)] == [0.5, 1.0, 2.0, 10.0, 10.0]
    assert transient_retry_delay(1, 10.0, rand=lambda: 0.0) == 0.25  # jittered in the upper half
    assert claim_retry_wait(0, 1.0) == 1.0
    assert [claim_retry_wait(n, 1.0) for n in (1, 2, 10)] == [2.0, 4.0, CLAIM_BACKOFF_MAX_SECONDS]


def test_the_history_is_not_changed_in_place() -> None:
    history = AttemptHistory(limit=3)
    decide_retry(
        REFUSED,
        1,
        history,
        limits=RetryLimits(RetryPolicy()),
        image_kept=False,
        fallback_available=False,
        deadline=START + timedelta(minutes=5),
        now=START,
    )
    assert history == AttemptHistory(limit=3)
