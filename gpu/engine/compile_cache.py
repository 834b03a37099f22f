"""torch.compile's artefacts kept in a folder (on Modal, a Volume), so a new container loads compiled code instead
of compiling it again.

torch's portable "mega-cache" (`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`) holds the compiled
graphs (inductor's FX graph cache, AOTAutograd's cache, Triton's autotuning): loaded before the first call, the
compile turns into cache hits. One file per torch build and device, since compiled kernels fit only those; a file
from another build loads but misses, and is then replaced by this container's own.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("gpu.engine.compile_cache")


@dataclass(frozen=True)
class CacheCounts:
    """Inductor's graph cache hits and misses in this process so far."""

    hits: int
    misses: int

    @staticmethod
    def now() -> CacheCounts:
        from torch._dynamo.utils import counters

        inductor = counters["inductor"]
        return CacheCounts(int(inductor["fxgraph_cache_hit"]), int(inductor["fxgraph_cache_miss"]))

    def since(self, earlier: CacheCounts) -> CacheCounts:
        return CacheCounts(self.hits - earlier.hits, self.misses - earlier.misses)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def device_label(device: torch.device) -> str:
    """What the compiled kernels are specific to: the GPU's name (its architecture), or the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class CompileCache:
    """One artefacts file in `directory` for this torch build on `device`."""

    def __init__(self, directory: Path, device: torch.device) -> None:
        self.path = directory / f"torch-{_slug(torch.__version__)}-{_slug(device_label(device))}.bin"
        self.loaded = False

    def load(self) -> bool:
        """Hand the saved artefacts to torch before anything compiles; False when there are none (or unreadable)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as error:
            log.warning("compile cache %s unreadable (%s): compiling from scratch", self.path, error)
            return False
        try:
            # None for a file torch cannot read (it logs why): a truncated or foreign file only means compiling.
            info = torch.compiler.load_cache_artifacts(data)
        except Exception as error:
            info = None
            log.warning("compile cache %s raised %s while loading", self.path, type(error).__name__)
        if info is None:
            log.warning("compile cache %s not loadable: compiling from scratch", self.path)
            return False
        self.loaded = True
        log.info("compile cache loaded from %s (%d bytes)", self.path, len(data))
        return True

    def save(self) -> int:
        """Write this process's artefacts (atomically: a reader never sees half a file); the bytes written."""
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return 0
        data = artifacts[0]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(self.path)
        log.info("compile cache saved to %s (%d bytes)", self.path, len(data))
        return len(data)
