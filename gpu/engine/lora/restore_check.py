"""After a restore, compare restored layers with their originals: all of them, or a rotating sample.

The comparison guards against a bug (a layer the restore missed), not against rounding: `copy_` is exact. On a CPU
every layer is compared (`torch.equal` stops at the first differing element, and nothing waits on a device). On a
GPU a full comparison of ~560 layers dispatches ~1,120 ops (counted on the meta device, `python -m gpu.bench.swap`)
and waits for them on every request, far more than the restore's own few; there each restore compares a different
slice of `sample` layers, so a layer a broken restore keeps missing is caught within ceil(layers / sample) restores
of that LoRA.
"""

from __future__ import annotations

from typing import Literal

import torch

from gpu.engine.lora.groups import LayerKey

RestoreCheck = Literal["auto", "full", "sampled"]
# Layers compared per restore in the sampled check: 16 of a full-size LoRA's 560 → every layer within 35 restores.
SAMPLE_LAYERS = 16


def check_is_sampled(choice: RestoreCheck, device: torch.device) -> bool:
    """`auto` samples on a GPU (where the full check costs more than the restore) and checks everything elsewhere."""
    return choice == "sampled" or (choice == "auto" and device.type == "cuda")


class RotatingSample:
    """Picks `size` consecutive layers of each restored list, starting where the previous pick ended."""

    def __init__(self, size: int = SAMPLE_LAYERS) -> None:
        self.size = max(1, size)
        self._start = 0

    def pick(self, keys: list[LayerKey]) -> list[LayerKey]:
        if len(keys) <= self.size:
            return list(keys)
        start = self._start % len(keys)
        self._start = start + self.size
        chosen = keys[start : start + self.size]
        return chosen + keys[: self.size - len(chosen)]


def batched_differences(weights: list[torch.Tensor], originals: list[torch.Tensor]) -> list[bool]:
    """Which weights differ from their originals: every comparison queued, then one synchronisation (a GPU's way;
    per-layer `torch.equal` would wait on the device once per layer)."""
    if not weights:
        return []
    flags = torch.stack([torch.ne(w, o).any() for w, o in zip(weights, originals, strict=True)])
    return [bool(flag) for flag in flags.tolist()]


def each_difference(weights: list[torch.Tensor], originals: list[torch.Tensor]) -> list[bool]:
    """Which weights differ, one `torch.equal` each (a CPU's way: it stops at the first differing element)."""
    return [not torch.equal(w, o) for w, o in zip(weights, originals, strict=True)]
