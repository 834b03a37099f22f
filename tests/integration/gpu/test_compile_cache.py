"""A second worker process loads the compiled UNet the first one saved (`python -m gpu.warmup`, twice, each with an
empty inductor cache of its own): no graph compiled again, the same image bits, and an unusable cache file is only a
slower start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gpu.compile_cache import CompileCache

ROOT = Path(__file__).resolve().parents[3]


def warm_up_process(model_dir: Path, cache_dir: Path, inductor_dir: Path) -> dict[str, Any]:
    """A fresh worker process's warm-up at 64×64, its report as JSON."""
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "WORKER_DEVICE": "cpu",
        "WORKER_MODE": "local",
        "WORKER_COMPILE": "on",
        "WORKER_COMPILE_CACHE_DIR": str(cache_dir),
        "WORKER_WARMUP_SIZES": "64x64",
        # Each process its own local cache: only the shared artefacts file can carry compiled code across.
        "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gpu.warmup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_new_process_loads_the_compiled_unet_instead_of_compiling(tiny_model_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "compile-cache"
    first = warm_up_process(tiny_model_dir, shared, tmp_path / "inductor-1")
    assert first["compiled"] and not first["cache_loaded"]
    assert first["cache_misses"] >= 1 and first["cache_bytes_saved"] > 0
    assert len(list(shared.iterdir())) == 1

    second = warm_up_process(tiny_model_dir, shared, tmp_path / "inductor-2")
    assert second["cache_loaded"] and second["cache_hits"] >= 1
    assert second["cache_misses"] == 0 and second["cache_bytes_saved"] == 0  # nothing compiled, nothing rewritten
    assert second["image_sha256"] == first["image_sha256"]


@pytest.mark.parametrize("content", [b"", b"not torch artefacts"], ids=["empty", "foreign"])
def test_an_unusable_cache_file_is_not_loaded(tmp_path: Path, content: bytes) -> None:
    cache = CompileCache(tmp_path, torch.device("cpu"))
    cache.path.write_bytes(content)
    assert cache.load() is False and not cache.loaded


def test_no_file_means_nothing_loaded(tmp_path: Path) -> None:
    assert CompileCache(tmp_path / "absent", torch.device("cpu")).load() is False
