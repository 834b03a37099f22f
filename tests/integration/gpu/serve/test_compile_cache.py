"""A second worker process loads the compiled UNet the first one saved (`python -m gpu.serve.warmup`, twice, each with
an
empty inductor cache of its own): no graph compiled again, the same image bits, even though the first was killed
while it compiled its second size (as Modal's start-up timeout would); and an unusable cache file is only a slower
start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gpu.engine.compile_cache import CompileCache

ROOT = Path(__file__).resolve().parents[3]


# What `gpu.serve.warmup` logs once a size is done (after its compile cache was saved and committed).
SIZE_DONE = re.compile(r"warm-up at (\d+x\d+): .* image sha256 (\w+), compile cache saved: (\d+) bytes")


def worker_env(model_dir: Path, cache_dir: Path, inductor_dir: Path, sizes: str) -> dict[str, str]:
    return {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "WORKER_DEVICE": "cpu",
        "WORKER_MODE": "local",
        "WORKER_COMPILE": "on",
        "WORKER_COMPILE_CACHE_DIR": str(cache_dir),
        "WORKER_WARMUP_SIZES": sizes,
        # Each process its own local cache: only the shared artefacts file can carry compiled code across.
        "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir),
    }


def warm_up_process(model_dir: Path, cache_dir: Path, inductor_dir: Path) -> dict[str, Any]:
    """A fresh worker process's warm-up at 64×64, its report as JSON."""
    env = worker_env(model_dir, cache_dir, inductor_dir, "64x64")
    done = subprocess.run(
        [sys.executable, "-m", "gpu.serve.warmup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def killed_after_first_size(model_dir: Path, cache_dir: Path, inductor_dir: Path) -> tuple[str, str, int]:
    """A fresh worker process warming 64×64 then 64×96, killed as soon as it says 64×64 is done (a container stopped
    by its start-up timeout in the middle of its warm-up): that size's image digest and saved bytes."""
    env = worker_env(model_dir, cache_dir, inductor_dir, "64x64,64x96")
    worker = subprocess.Popen(
        [sys.executable, "-m", "gpu.serve.warmup"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stderr is not None
    seen = []
    try:
        for line in worker.stderr:  # blocks until the next line: waits on the worker, not on a clock
            seen.append(line)
            if (done := SIZE_DONE.search(line)) is not None:
                worker.kill()
                assert worker.wait(timeout=60) < 0, "the worker had finished on its own"
                return done.group(1), done.group(2), int(done.group(3))
    finally:
        worker.kill()
        worker.wait(timeout=60)
    raise AssertionError(f"the worker ended (rc {worker.returncode}) without a size done:\n{''.join(seen[-20:])}")


def test_a_new_process_loads_the_compiled_unet_instead_of_compiling(tiny_model_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "compile-cache"
    size, first_image, saved = killed_after_first_size(tiny_model_dir, shared, tmp_path / "inductor-1")
    assert size == "64x64" and saved > 0  # saved then, not only once every size is done
    assert [path.stat().st_size for path in shared.iterdir()] == [saved]

    second = warm_up_process(tiny_model_dir, shared, tmp_path / "inductor-2")
    assert second["cache_loaded"] and second["cache_hits"] >= 1
    assert second["cache_misses"] == 0 and second["cache_bytes_saved"] == 0  # nothing compiled, nothing rewritten
    assert second["cache_saved"] == {} and second["sealed"]
    assert second["image_sha256"] == {"64x64": first_image}


@pytest.mark.parametrize("content", [b"", b"not torch artefacts"], ids=["empty", "foreign"])
def test_an_unusable_cache_file_is_not_loaded(tmp_path: Path, content: bytes) -> None:
    cache = CompileCache(tmp_path, torch.device("cpu"))
    cache.path.write_bytes(content)
    assert cache.load() is False and not cache.loaded


def test_no_file_means_nothing_loaded(tmp_path: Path) -> None:
    assert CompileCache(tmp_path / "absent", torch.device("cpu")).load() is False
