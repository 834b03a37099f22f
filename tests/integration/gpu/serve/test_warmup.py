"""The warm-up before serving: it generates at each configured size, a compiled UNet that fails on this machine is
dropped for eager instead of failing every request, and after it a size or cfg it did not warm runs eager (counted)
instead of compiling on the request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from gpu.engine.compiled import compile_unet, is_compiled
from gpu.serve.settings import WorkerSettings
from gpu.serve.warmup import warm_up
from tests.support.engine import png_of, request, tiny_engine


def failing_backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """Fault injection: a compiler backend that fails, as a compile can on a machine whose toolchain is broken."""
    raise RuntimeError("no compiler here")


class CountingBackend:
    """A compiler backend that runs dynamo's graph as it is (no inductor: seconds, not a minute, on this CPU) and
    counts the graphs it was given and the calls of them."""

    def __init__(self) -> None:
        self.graphs = 0
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1

        def run(*args: Any) -> Any:
            self.runs += 1
            return graph.forward(*args)

        return run


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches and counters are process-wide: start from none, leave none."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def settings(model_dir: Path, cache_dir: Path | None = None, sizes: str = "64x64,64x96") -> WorkerSettings:
    return WorkerSettings(
        MODEL_DIR=model_dir, WORKER_DEVICE="cpu", WORKER_WARMUP_SIZES=sizes, WORKER_COMPILE_CACHE_DIR=cache_dir
    )


def test_after_the_warm_up_an_unwarmed_size_or_cfg_runs_eager_and_counted_never_compiles(
    tiny_model_dir: Path, fresh_dynamo: None, caplog: pytest.LogCaptureFixture
) -> None:
    engine = tiny_engine(tiny_model_dir)
    backend = CountingBackend()
    compile_unet(engine.pipeline, backend=backend)
    report = warm_up(engine, settings(tiny_model_dir, sizes="64x64"))
    assert report.compiled and set(report.image_sha256) == {"64x64"}
    graphs, frames = backend.graphs, counters["frames"]["ok"]
    assert graphs >= 1 and frames >= 1

    caplog.set_level(logging.WARNING, logger="gpu.engine.compile_gate")
    # Another size, then no classifier-free guidance (batch 1 instead of 2), each twice; 2 steps each.
    unwarmed = [request(width=96, steps=2), request(cfg=1.0, steps=2)] * 2
    assert all(png_of(engine.generate(r)) for r in unwarmed)
    assert (backend.graphs, counters["frames"]["ok"]) == (graphs, frames), "a request compiled the UNet"

    runs = backend.runs
    png_of(engine.generate(request(steps=2)))  # the warmed shape still runs the compiled code
    assert backend.runs > runs and backend.graphs == graphs

    from gpu.engine.compiled import compile_gate

    gate = compile_gate(engine.pipeline)
    assert gate is not None and report.sealed
    stats = gate.stats()
    assert stats.eager_calls == 8  # 4 requests x 2 steps, one UNet call per step
    assert set(stats.eager_by_shape) == {"96x64 (cfg > 1, UNet batch 2)", "64x64 (cfg ≤ 1, UNet batch 1)"}
    warned = [
        r.getMessage() for r in caplog.records if r.name == "gpu.engine.compile_gate" and r.levelno == logging.WARNING
    ]
    assert len(warned) == 2 and "96x64" in warned[0] and "cfg ≤ 1" in warned[1]  # once per new shape


def test_a_compiled_unet_that_fails_its_warm_up_is_served_eager(tiny_model_dir: Path, tmp_path: Path) -> None:
    eager = tiny_engine(tiny_model_dir)
    expected = warm_up(eager, settings(tiny_model_dir)).image_sha256

    engine = tiny_engine(tiny_model_dir)
    engine.pipeline.unet.compile(backend=failing_backend)
    report = warm_up(engine, settings(tiny_model_dir, tmp_path / "cache"))

    assert report.compile_failed is not None and "GENERATION_FAILED" in report.compile_failed
    assert not report.compiled and not is_compiled(engine.pipeline)
    assert report.image_sha256 == expected  # both sizes served, by the eager UNet
    assert not (tmp_path / "cache").exists()  # nothing compiled: nothing saved


def test_an_eager_warm_up_generates_every_size_and_leaves_the_cache_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = tiny_engine(tiny_model_dir)
    report = warm_up(engine, settings(tiny_model_dir, tmp_path / "cache"))
    assert not report.compiled and report.compile_failed is None
    assert set(report.image_sha256) == {"64x64", "64x96"} and set(report.seconds) == {"64x64", "64x96"}
    assert not report.cache_loaded and report.cache_bytes_saved == 0
