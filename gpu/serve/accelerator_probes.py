"""Accelerator probes held off while the model loads before a memory snapshot, so no "no GPU" answer is frozen in it.

On Modal the `snap=True` hook runs on a CPU-only host and its memory is snapshotted; a GPU is attached only after
restore. torch counts the devices once per process (a C++ static behind `torch.cuda.is_available`,
`torch.accelerator.current_accelerator` and their kin), so any probe before the snapshot freezes "no device" into
it and every request after restore fails. The project never probes then, but libraries do at import: diffusers
runs `get_device()` at module level (`diffusers/utils/torch_utils.py`), transformers asks for the current
accelerator importing its flex-attention integration. Inside `probes_held_off()` those functions answer "none"
without reaching torch's C++ side, and the answers libraries memoised are forgotten on the way out, so that
after restore the first real probe sees the GPU.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

# (module, attribute, the answer a machine without an accelerator gives). Every public spelling that reaches the
# device count: torch.cuda's and torch.accelerator's.
_NO_ACCELERATOR: tuple[tuple[Any, str, Any], ...] = (
    (torch.cuda, "is_available", False),
    (torch.cuda, "device_count", 0),
    (torch.cuda, "is_initialized", False),
    (torch.accelerator, "is_available", False),
    (torch.accelerator, "current_accelerator", None),
    (torch.accelerator, "device_count", 0),
)
# Raised, not answered: a library that would initialise CUDA before the snapshot must fail loudly here.
_REFUSED: tuple[tuple[Any, str], ...] = ((torch.cuda, "_lazy_init"), (torch.cuda, "init"))

_lock = threading.Lock()


class ProbeBeforeSnapshotError(RuntimeError):
    """Something tried to initialise CUDA before the memory snapshot."""


@dataclass
class HeldOffProbes:
    """Who asked, while the probes were held off: `torch.cuda.is_available` → count of calls."""

    asked: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.asked.values())

    def summary(self) -> str:
        return ", ".join(f"{name} ×{count}" for name, count in sorted(self.asked.items())) or "none"


def _qualified(owner: Any, name: str) -> str:
    return f"{owner.__name__}.{name}"


def _answering(owner: Any, name: str, answer: Any, held: HeldOffProbes) -> Callable[..., Any]:
    qualified = _qualified(owner, name)

    def held_off(*_args: object, **_kwargs: object) -> Any:
        held.asked[qualified] += 1
        return answer

    return held_off


def _refusing(owner: Any, name: str) -> Callable[..., Any]:
    qualified = _qualified(owner, name)

    def refused(*_args: object, **_kwargs: object) -> Any:
        raise ProbeBeforeSnapshotError(f"{qualified}() was called before the memory snapshot")

    return refused


def forget_memoised_answers() -> None:
    """Clear what libraries cached from a held-off probe (only those already imported; nothing is imported here)."""
    torch_utils = sys.modules.get("diffusers.utils.torch_utils")
    backend = getattr(torch_utils, "TorchDeviceBackend", None)
    detect = getattr(backend, "_detect_device_type", None)
    if detect is not None and hasattr(detect, "cache_clear"):
        detect.cache_clear()


@contextmanager
def probes_held_off() -> Iterator[HeldOffProbes]:
    """Within: CUDA and accelerator probes answer "none" (and are counted), CUDA initialisation raises. On exit
    the real functions are back and memoised answers forgotten. Not reentrant across threads: one load at a time."""
    held = HeldOffProbes()
    with _lock:
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in _NO_ACCELERATOR]
        originals += [(owner, name, getattr(owner, name)) for owner, name in _REFUSED]
        try:
            for owner, name, answer in _NO_ACCELERATOR:
                setattr(owner, name, _answering(owner, name, answer, held))
            for owner, name in _REFUSED:
                setattr(owner, name, _refusing(owner, name))
            yield held
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
            forget_memoised_answers()
