"""The compiled UNet (WORKER_COMPILE, torch.compile with inductor) on the tiny SDXL, on CPU: LoRA A, B, none, then
A at another scale run on the code compiled for the first request, with no recompilation (dynamo is told to raise
on one); the images equal the eager engine's within one level of 255; the base weights stay bit-identical."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from PIL import Image
from torch._dynamo.utils import counters

from gpu.engine.fingerprint import fingerprint_pipeline
from tests.support.engine import png_of, request, tiny_engine
from tests.support.file_server import FileServer

pytestmark = pytest.mark.slow
# Inductor's CPU kernels differ from eager's in rounding: pixels may move by one level, rarely.
MAX_PIXEL_DIFFERENCE = 1
MEAN_PIXEL_DIFFERENCE = 0.01


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches and counters are process-wide: start from none, leave none."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image).astype(np.int16)


def test_swaps_run_on_one_compiled_graph_and_match_eager(
    tiny_model_dir: Path,
    lora_files: dict[str, Path],
    file_server: FileServer,
    fresh_dynamo: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = {name: file_server.add(f"/{name}.safetensors", lora_files[name].read_bytes()) for name in ("a", "b")}
    swaps = [
        request(lora_url=url["a"], lora_scale=0.8, seed=11),
        request(lora_url=url["b"], lora_scale=1.0, seed=12),
        request(seed=13),
        request(lora_url=url["a"], lora_scale=0.3, seed=14),
    ]
    eager = tiny_engine(tiny_model_dir)
    expected = [pixels(png_of(eager.generate(r))) for r in swaps]

    compiled = tiny_engine(tiny_model_dir, WORKER_COMPILE="on")
    before = fingerprint_pipeline(compiled.pipeline)
    first = pixels(png_of(compiled.generate(swaps[0])))  # compiles
    graphs = counters["stats"]["unique_graphs"]
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    rest = [pixels(png_of(compiled.generate(r))) for r in swaps[1:]]

    assert graphs == 1 and counters["stats"]["unique_graphs"] == graphs, "a LoRA swap recompiled the UNet"
    for got, want in zip([first, *rest], expected, strict=True):
        difference = np.abs(got - want)
        assert difference.max() <= MAX_PIXEL_DIFFERENCE and difference.mean() <= MEAN_PIXEL_DIFFERENCE
    assert not np.array_equal(rest[0], rest[1]), "the LoRA changed nothing"
    assert fingerprint_pipeline(compiled.pipeline) == before
    # The guard is live: another image size needs another graph, and dynamo refuses to make it.
    resized = compiled.generate(request(width=96, seed=15))
    assert "RecompileError" in str(getattr(resized, "details", {}).get("reason"))


def test_auto_compiles_on_a_gpu_only() -> None:
    from gpu.engine.compiled import should_compile

    assert should_compile("auto", torch.device("cuda")) and not should_compile("auto", torch.device("cpu"))
    assert should_compile("on", torch.device("cpu")) and not should_compile("off", torch.device("cuda"))
