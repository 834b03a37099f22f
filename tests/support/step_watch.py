"""Watch the real pipeline of an engine: which prompts it ran, how many UNet steps each took, and events a test
can wait on (a run reached its first step; a condition became true at some step) instead of sleeping."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from diffusers import StableDiffusionXLPipeline

from gpu.engine.engine import SdxlLoraEngine

WAIT = 60.0


class StepWatch:
    """Counts UNet forward calls per prompt (one per denoising step: classifier-free guidance batches both
    halves into one call) and records every pipeline run by its prompt."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.steps: Counter[str] = Counter()
        self._current: str | None = None
        self._started: dict[str, threading.Event] = {}
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def started(self, prompt: str) -> threading.Event:
        with self._lock:
            return self._started.setdefault(prompt, threading.Event())

    def wait_started(self, prompt: str, timeout: float = WAIT) -> None:
        assert self.started(prompt).wait(timeout), f"{prompt!r} did not reach its first step within {timeout}s"

    def on_step(self, callback: Callable[[], object]) -> None:
        """Call `callback` in the pipeline's thread as each denoising step starts (until `clear`)."""
        with self._lock:
            self._callbacks.append(callback)

    def clear(self) -> None:
        with self._lock:
            self._callbacks.clear()

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until `condition` holds at the start of some denoising step (a run must be in progress)."""
        event = threading.Event()
        self.on_step(lambda: condition() and event.set())
        assert event.wait(timeout), f"condition not met at any step within {timeout}s"

    def _on_run(self, prompt: str) -> None:
        with self._lock:
            self.runs.append(prompt)
            self._current = prompt

    def _on_step(self) -> None:
        with self._lock:
            prompt = self._current or "?"
            self.steps[prompt] += 1
            started = self._started.setdefault(prompt, threading.Event())
            callbacks = list(self._callbacks)
        started.set()
        for callback in callbacks:
            callback()


@contextmanager
def watch_steps(engine: SdxlLoraEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[StepWatch]:
    watch = StepWatch()
    real_call = StableDiffusionXLPipeline.__call__

    def recording_call(self: StableDiffusionXLPipeline, *args: Any, **kwargs: Any) -> Any:
        watch._on_run(str(kwargs.get("prompt")))
        return real_call(self, *args, **kwargs)

    def on_unet_forward(*_: object) -> None:
        watch._on_step()

    monkeypatch.setattr(StableDiffusionXLPipeline, "__call__", recording_call)
    handle = engine.pipeline.unet.register_forward_pre_hook(on_unet_forward)
    try:
        yield watch
    finally:
        handle.remove()
