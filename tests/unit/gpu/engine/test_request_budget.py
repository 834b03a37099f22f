"""RequestBudget: the deadline counts from arrival, the first cancel reason is kept, waiters are woken."""

from gpu.engine.budget import RequestBudget


def test_deadline_counts_from_arrival_with_the_engine_default_when_none_given() -> None:
    now = [100.0]
    budget = RequestBudget(clock=lambda: now[0])
    now[0] = 104.0
    assert budget.deadline(30.0) == 130.0 and budget.elapsed() == 4.0
    assert RequestBudget(5.0, clock=lambda: now[0]).deadline(30.0) == 109.0


def test_cancel_keeps_the_first_reason_and_calls_each_waiter_once() -> None:
    budget = RequestBudget()
    woken: list[str] = []
    budget.on_cancel(lambda: woken.append("early"))
    removed = lambda: woken.append("removed")  # noqa: E731
    budget.on_cancel(removed)
    budget.remove_on_cancel(removed)
    assert budget.cancel("job canceled") is True
    assert budget.cancel("client disconnected") is False
    budget.on_cancel(lambda: woken.append("late"))
    assert budget.canceled and budget.cancel_reason == "job canceled"
    assert woken == ["early", "late"]
