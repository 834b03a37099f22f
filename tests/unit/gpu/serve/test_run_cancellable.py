"""`run_cancellable` without an engine: an interruption of the caller's thread cancels the budget, waits for the
work to end (through further interruptions), then goes on; the pool's one thread is free afterwards."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from modal.exception import InputCancellation

from gpu.engine.budget import RequestBudget
from gpu.serve.cancellable import INTERRUPTED_REASON, run_cancellable
from tests.support.modal_cancel import CancelSignal, modal_cancel_signal

WAIT = 30.0


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


@pytest.fixture
def cancel() -> Iterator[CancelSignal]:
    with modal_cancel_signal() as signal:
        yield signal


def engine_like(budget: RequestBudget, steps: list[int], on_step: Callable[[int], None], linger: float = 0.0) -> Any:
    """Works in steps until its budget is canceled (as the engine does), then lingers (its restore) and returns."""

    def work() -> str:
        for step in range(1, 10_000):
            steps.append(step)
            on_step(step)
            if budget.canceled:
                time.sleep(linger)
                return f"stopped at {step}"
            time.sleep(0.01)
        return "ran to the end"

    return work


def test_the_result_comes_back_and_nothing_is_canceled(pool: ThreadPoolExecutor) -> None:
    budget = RequestBudget()
    assert run_cancellable(pool, lambda: 42, budget) == 42
    assert not budget.canceled


def test_an_exception_of_the_work_goes_on_as_is(pool: ThreadPoolExecutor) -> None:
    def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        run_cancellable(pool, broken, RequestBudget())


def test_an_interruption_cancels_the_budget_waits_for_the_work_and_goes_on(
    pool: ThreadPoolExecutor, cancel: CancelSignal
) -> None:
    budget, steps, ended = RequestBudget(), [], threading.Event()
    work = engine_like(budget, steps, lambda step: step == 3 and cancel.send(), linger=0.2)

    def tracked() -> str:
        try:
            return str(work())
        finally:
            ended.set()

    with pytest.raises(InputCancellation, match="cancel 1"):
        run_cancellable(pool, tracked, budget)
    assert ended.is_set(), "the interruption went on before the work had ended"
    assert budget.cancel_reason == INTERRUPTED_REASON
    assert steps[-1] <= 5
    assert run_cancellable(pool, lambda: "next", RequestBudget()) == "next"


def test_further_interruptions_during_the_wait_do_not_skip_it(pool: ThreadPoolExecutor, cancel: CancelSignal) -> None:
    budget, steps, ended = RequestBudget(), [], threading.Event()

    def on_step(step: int) -> None:
        if step == 2:
            cancel.send()

    def work() -> str:
        result = engine_like(budget, steps, on_step)()
        # The "restore": two more cancels arrive while the caller waits for it.
        for _ in range(2):
            cancel.send()
            time.sleep(0.1)
        ended.set()
        return str(result)

    with pytest.raises(InputCancellation) as caught:
        run_cancellable(pool, work, budget)
    assert ended.is_set()
    assert cancel.delivered == 3 and str(caught.value) == "cancel 1", "the first interruption is the one raised"
    assert run_cancellable(pool, lambda: "next", RequestBudget()) == "next"


class InterruptedSubmit(ThreadPoolExecutor):
    """Fault injection: the interruption lands inside `submit`, after the work was queued, before its future came
    back to the caller."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        super().submit(fn, *args, **kwargs)
        raise InputCancellation("interrupted inside submit")


def test_an_interruption_inside_submit_still_cancels_the_budget() -> None:
    budget, steps, gate = RequestBudget(), [], threading.Event()
    work = engine_like(budget, steps, lambda step: None)

    def queued() -> str:
        assert gate.wait(WAIT)  # starts once the caller was interrupted
        return str(work())

    with InterruptedSubmit(max_workers=1) as executor:
        with pytest.raises(InputCancellation, match="inside submit"):
            run_cancellable(executor, queued, budget)
        assert budget.canceled
        gate.set()
    # The executor's shutdown waited for the queued work: it saw the cancel at its first check.
    assert steps == [1]
