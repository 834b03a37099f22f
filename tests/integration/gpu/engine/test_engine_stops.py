"""The engine stops a request at the next denoising step when it is canceled or its budget (counted from arrival)
is spent, refuses one whose budget ran out while it waited, restores the base weights, and serves the next."""

import threading
import time
from pathlib import Path

import pytest

from contracts.errors import WorkerErrorCode
from contracts.worker import WorkerError, WorkerSuccess
from gpu.engine.budget import RequestBudget
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.errors import is_canceled
from gpu.engine.fingerprint import fingerprint_pipeline
from tests.support.engine import error_of, png_of, request, tiny_engine
from tests.support.file_server import FileServer
from tests.support.step_watch import WAIT, watch_steps

LONG = {"steps": 100, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> SdxlLoraEngine:
    return tiny_engine(tiny_model_dir)


@pytest.fixture
def lora_url(file_server: FileServer, lora_files: dict[str, Path]) -> str:
    return file_server.add("/a.safetensors", lora_files["a"].read_bytes())


def in_thread(target: object) -> tuple[threading.Thread, list[WorkerSuccess | WorkerError]]:
    """Run `engine.generate(...)` (a no-argument callable) in a thread; its outcome lands in the list."""
    outcome: list[WorkerSuccess | WorkerError] = []
    thread = threading.Thread(target=lambda: outcome.append(target()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, outcome


def test_cancel_mid_denoise_stops_at_the_next_step_restores_weights_and_frees_the_engine(
    engine: SdxlLoraEngine, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint_pipeline(engine.pipeline)
    budget = RequestBudget()
    with watch_steps(engine, monkeypatch) as watch:
        # The cancel arrives while the first step runs: the step callback that ends it must stop the run.
        watch.on_step(lambda: budget.cancel("test"))
        error = error_of(engine.generate(request(prompt="long", lora_url=lora_url, **LONG), budget))
        assert is_canceled(error) and error.retryable is False
        assert error.details["steps_done"] == 1 and watch.steps["long"] == 1
        assert fingerprint_pipeline(engine.pipeline) == before
        watch.clear()
        assert png_of(engine.generate(request(prompt="next", lora_url=lora_url)))
    assert watch.runs == ["long", "next"]
    assert fingerprint_pipeline(engine.pipeline) == before


def test_cancel_from_another_thread_stops_within_two_steps(
    engine: SdxlLoraEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = RequestBudget()
    with watch_steps(engine, monkeypatch) as watch:
        thread, outcome = in_thread(lambda: engine.generate(request(prompt="long", **LONG), budget))
        watch.wait_started("long")
        budget.cancel("caller went away")
        thread.join(WAIT)
        assert not thread.is_alive()
    error = error_of(outcome[0])
    assert is_canceled(error) and error.details["reason"] == "caller went away"
    assert watch.steps["long"] <= 3, f"ran {watch.steps['long']} steps after a cancel at step 1"


def test_a_budget_spent_while_waiting_for_the_engine_is_timeout_without_running(
    engine: SdxlLoraEngine, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint_pipeline(engine.pipeline)
    first_budget = RequestBudget()
    with watch_steps(engine, monkeypatch) as watch:
        first, first_outcome = in_thread(
            lambda: engine.generate(request(prompt="first", lora_url=lora_url, **LONG), first_budget)
        )
        watch.wait_started("first")
        queued, queued_outcome = in_thread(lambda: engine.generate(request(prompt="queued", timeout_seconds=0.2)))
        queued.join(WAIT)  # answered when its budget runs out, while "first" still holds the engine
        assert not queued.is_alive() and first.is_alive()
        first_budget.cancel("test done")
        first.join(WAIT)
    error = error_of(queued_outcome[0])
    assert error.error_code == WorkerErrorCode.TIMEOUT and "before the request started" in error.error
    assert error.details["waited_seconds"] >= 0.2
    assert watch.runs == ["first"]
    assert is_canceled(error_of(first_outcome[0]))
    assert fingerprint_pipeline(engine.pipeline) == before


def test_budget_counts_from_arrival_not_from_when_the_engine_takes_it(
    engine: SdxlLoraEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget that arrived long ago (here: a clock that says so) is refused at once, the engine being free."""
    arrived_long_ago = RequestBudget(timeout_seconds=5, clock=lambda: time.monotonic() - 10)
    with watch_steps(engine, monkeypatch) as watch:
        error = error_of(engine.generate(request(prompt="stale"), arrived_long_ago))
    assert error.error_code == WorkerErrorCode.TIMEOUT and error.details["timeout_seconds"] == 5
    assert watch.runs == []


def test_a_canceled_request_that_never_started_does_not_run(
    engine: SdxlLoraEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = RequestBudget()
    budget.cancel("dropped")
    with watch_steps(engine, monkeypatch) as watch:
        error = error_of(engine.generate(request(prompt="dropped"), budget))
    assert is_canceled(error) and watch.runs == []
