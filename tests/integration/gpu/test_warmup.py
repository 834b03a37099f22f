"""The warm-up before serving: it generates at each configured size, and a compiled UNet that fails on this machine
is dropped for eager instead of failing every request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpu.compiled import is_compiled
from gpu.settings import WorkerSettings
from gpu.warmup import warm_up
from tests.support.engine import tiny_engine


def failing_backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """Fault injection: a compiler backend that fails, as a compile can on a machine whose toolchain is broken."""
    raise RuntimeError("no compiler here")


def settings(model_dir: Path, cache_dir: Path | None = None) -> WorkerSettings:
    return WorkerSettings(
        MODEL_DIR=model_dir, WORKER_DEVICE="cpu", WORKER_WARMUP_SIZES="64x64,64x96", WORKER_COMPILE_CACHE_DIR=cache_dir
    )


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
