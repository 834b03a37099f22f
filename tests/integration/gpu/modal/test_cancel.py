"""Modal's cancel of a running input (InputCancellation raised by SIGUSR1 in the main thread) with the tiny engine
on its worker thread: the engine stops within a few steps and restores the base weights itself, the interruption
goes on only then, and the container serves the next input. This is what lets the cancel endpoint leave the
container running (`terminate_containers=False`)."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from modal.exception import InputCancellation

from gpu.engine.budget import RequestBudget
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.serve.cancellable import INTERRUPTED_REASON, run_cancellable
from gpu.serve.handler import handle_payload
from tests.support.engine import tiny_engine
from tests.support.file_server import FileServer
from tests.support.modal_cancel import CancelSignal, modal_cancel_signal
from tests.support.step_watch import watch_steps

LONG = {"prompt": "long", "steps": 100, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> SdxlLoraEngine:
    return tiny_engine(tiny_model_dir)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-engine") as executor:
        yield executor


@pytest.fixture
def cancel() -> Iterator[CancelSignal]:
    with modal_cancel_signal() as signal:
        yield signal


@pytest.fixture
def lora_url(file_server: FileServer, lora_files: dict[str, Path]) -> str:
    return file_server.add("/a.safetensors", lora_files["a"].read_bytes())


def once(action: Callable[[], object]) -> Callable[[], None]:
    done = threading.Event()

    def call() -> None:
        if not done.is_set():
            done.set()
            action()

    return call


class Tracked:
    """`handle_payload` on the engine, recording its answer and whether it had returned."""

    def __init__(self, engine: SdxlLoraEngine, payload: dict[str, Any], budget: RequestBudget) -> None:
        self.engine, self.payload, self.budget = engine, payload, budget
        self.answer: tuple[int, dict[str, Any]] | None = None
        self.ended = threading.Event()

    def __call__(self) -> tuple[int, dict[str, Any]]:
        try:
            self.answer = handle_payload(self.engine, self.payload, None, self.budget)
            return self.answer
        finally:
            self.ended.set()


def test_a_cancel_while_the_engine_runs_stops_it_restores_the_weights_then_propagates(
    engine: SdxlLoraEngine,
    pool: ThreadPoolExecutor,
    cancel: CancelSignal,
    lora_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = fingerprint_pipeline(engine.pipeline)
    budget = RequestBudget()
    run = Tracked(engine, {**LONG, "lora_url": lora_url}, budget)
    with watch_steps(engine, monkeypatch) as watch:
        watch.on_step(once(cancel.send))  # Modal's cancel arrives while the first denoising step runs
        with pytest.raises(InputCancellation, match="cancel 1"):
            run_cancellable(pool, run, budget)
        assert run.ended.is_set(), "the interruption went on before the engine had returned"
        assert fingerprint_pipeline(engine.pipeline) == before
        assert watch.steps["long"] <= 3, f"ran {watch.steps['long']} steps after a cancel at step 1"
    assert run.answer is not None
    status, body = run.answer
    assert (status, body["details"]["canceled"], body["details"]["reason"]) == (500, True, INTERRUPTED_REASON)
    assert engine.poisoned is None and engine.fuser.pending == []

    status, body = run_cancellable(
        pool, lambda: handle_payload(engine, {**LONG, "steps": 2, "lora_url": lora_url}), RequestBudget()
    )
    assert status == 200 and body["model_info"]["lora_applied"] is True
    assert fingerprint_pipeline(engine.pipeline) == before


class CancelDuringCopy:
    """Fault injection: the first copy of a layer back to its original sends a cancel, then takes 0.3 s."""

    def __init__(self, real_copy: Callable[[list[tuple[str, str]]], None], cancel: CancelSignal) -> None:
        self.real_copy, self.cancel, self.sent = real_copy, cancel, False

    def __call__(self, keys: list[tuple[str, str]]) -> None:
        if not self.sent:
            self.sent = True
            self.cancel.send()
            time.sleep(0.3)
        self.real_copy(keys)


def test_a_second_cancel_while_the_weights_are_restored_does_not_skip_the_wait(
    engine: SdxlLoraEngine,
    pool: ThreadPoolExecutor,
    cancel: CancelSignal,
    lora_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: copying the first layer back sends a second cancel and is slow (`CancelDuringCopy`), so the
    caller is interrupted again while it waits for the restore."""
    before = fingerprint_pipeline(engine.pipeline)
    monkeypatch.setattr(engine.fuser, "_copy_back", CancelDuringCopy(engine.fuser._copy_back, cancel))
    sent = once(cancel.send)
    budget = RequestBudget()
    run = Tracked(engine, {**LONG, "lora_url": lora_url}, budget)
    with watch_steps(engine, monkeypatch) as watch:
        watch.on_step(sent)
        with pytest.raises(InputCancellation) as caught:
            run_cancellable(pool, run, budget)
        assert run.ended.is_set(), "the second interruption cut the wait short"
        assert fingerprint_pipeline(engine.pipeline) == before
    assert cancel.delivered == 2 and str(caught.value) == "cancel 1"
    assert engine.poisoned is None and engine.fuser.pending == []
    monkeypatch.undo()
    status, _ = run_cancellable(pool, lambda: handle_payload(engine, {**LONG, "steps": 2}), RequestBudget())
    assert status == 200
