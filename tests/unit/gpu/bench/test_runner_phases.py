"""Each phase hands the results on as soon as it ends (the JSON survives a run stopped later); a phase the budget
cannot hold, or one asked to be skipped, is recorded as skipped with the reason, and never run."""

from typing import Any, cast

from gpu.bench.runner import TINY, Bench, BenchOptions, Clock


def bench(budget: float | None, seen: list[dict[str, Any]]) -> Bench:
    results: dict[str, Any] = {"phase_seconds": {}, "skipped": {}}
    none = cast(Any, None)
    return Bench(TINY, BenchOptions(), none, [], none, none, results, lambda r: seen.append(dict(r)), Clock(budget))


def test_a_phase_is_recorded_when_it_ends() -> None:
    seen: list[dict[str, Any]] = []
    b = bench(None, seen)
    b.phase("first", lambda: {"x": 1})
    b.phase("second", lambda: 2)
    assert [("first" in r, "second" in r) for r in seen] == [(True, False), (True, True)]
    assert set(b.results["phase_seconds"]) == {"first", "second"}


def test_a_phase_past_the_budget_or_asked_off_is_skipped_with_its_reason() -> None:
    seen: list[dict[str, Any]] = []
    ran: list[str] = []
    b = bench(60.0, seen)
    b.phase("compile", lambda: ran.append("compile"), needs_seconds=150)
    b.phase("replaced", lambda: ran.append("replaced"), skip="measured before")
    b.phase("cheap", lambda: ran.append("cheap"), needs_seconds=1)
    assert ran == ["cheap"]
    assert b.results["skipped"]["replaced"] == "measured before"
    assert b.results["skipped"]["compile"].startswith("budget:") and len(seen) == 3
