"""Nothing probes CUDA before Modal's memory snapshot: a fresh interpreter records every CUDA and accelerator probe
from before the first project import, runs the Modal class's snap=True hook as Modal does (the app module imported,
then the hook called), and the engine loads with no probe recorded.

torch counts devices once per process, so on Modal a probe before the snapshot (where no GPU is attached) freezes
"no device" into it, and after restore every request answers MODEL_LOAD_FAILED. The CPU build of torch cannot show
that freeze; what it can show is whether anything asked. diffusers and transformers ask at import, so this test
fails whenever the hook's imports or load run outside gpu/serve/accelerator_probes.py's guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]

# Runs in the fresh interpreter. torch is imported first (no project code yet), every probe wrapped to be recorded
# (then answered by torch itself), down to the C++ bindings where this build has them.
RECORDER = r"""
import json, sys, traceback
import torch
import torch.accelerator

probes = []

def record(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return
    def recorded(*args, **kwargs):
        caller = traceback.extract_stack(limit=4)[0]
        probes.append({"probe": label, "at": f"{caller.filename}:{caller.lineno}"})
        return original(*args, **kwargs)
    setattr(owner, name, recorded)

for name in ("is_available", "device_count", "_lazy_init", "init", "is_initialized", "current_device"):
    record(torch.cuda, name, f"torch.cuda.{name}")
for name in ("is_available", "current_accelerator", "device_count", "current_device_index", "current_device_idx"):
    record(torch.accelerator, name, f"torch.accelerator.{name}")
for name in ("_cuda_getDeviceCount", "_cuda_init", "_accelerator_getAccelerator", "_cuda_isInBadFork"):
    record(torch._C, name, f"torch._C.{name}")

import gpu.modal.app as modal_app  # what Modal's container does first: import the app's module

user_cls = modal_app.SdxlLoraWorker._get_user_cls()
worker = user_cls.__new__(user_cls)
user_cls.__dict__["load"]._get_raw_f()(worker)  # the @modal.enter(snap=True) hook
before_snapshot = list(probes)

# After restore the real functions answer again (and diffusers forgot what it memoised).
from diffusers.utils.torch_utils import TorchDeviceBackend
memoised = TorchDeviceBackend._detect_device_type.cache_info().currsize
torch.cuda.is_available()
lifecycle = worker.lifecycle
print(json.dumps({
    "probes": before_snapshot,
    "engine_loaded": lifecycle.engine is not None,
    "engine_device": str(lifecycle.engine.device) if lifecycle.engine is not None else None,
    "load_error": lifecycle.load_error.message if lifecycle.load_error else None,
    "diffusers_memoised_device": memoised,
    "probes_after_restore": len(probes) - len(before_snapshot),
}))
"""


def snap_hook_in_fresh_interpreter(model_dir: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "WORKER_MODE": "local",
        "WORKER_DEVICE": "cuda",  # as in the Modal image: named, never probed
        "WORKER_DTYPE": "float16",
    }
    done = subprocess.run(
        [sys.executable, "-c", RECORDER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_the_snapshot_hook_loads_the_engine_without_a_single_accelerator_probe(tiny_model_dir: Path) -> None:
    report = snap_hook_in_fresh_interpreter(tiny_model_dir)
    assert report["probes"] == []
    assert report["engine_loaded"] and report["load_error"] is None
    assert report["engine_device"] == "cpu"  # loaded on the CPU, moved after restore
    # Nothing memoised "no accelerator" for later, and the real probe is reachable again.
    assert report["diffusers_memoised_device"] == 0
    assert report["probes_after_restore"] >= 1
