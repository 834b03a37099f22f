"""The swap as it was before issue 25, kept only to be measured beside today's in the same run (`gpu.bench.swap`).

What it did per request: walk the module tree for every layer (`get_submodule`) in the fuse, the restore and the
check; compute each group's updates with a batched matmul and then scale them in a second pass; add fp32 updates to
half-precision weights with `_foreach_add_` (torch's per-tensor path for mixed dtypes); and compare every restored
layer with its original (on a GPU ~1,100 queued kernels and a synchronisation). Its fused and restored bits are the
same as today's fuser's, bar the update's last fp32 bit (tests/unit/gpu/bench/test_swap_before.py).
"""

from __future__ import annotations

import torch

from gpu.engine.lora.groups import FuseGroup, LayerKey
from gpu.engine.lora.plan import LoraPlan
from gpu.engine.lora.restore_check import batched_differences, each_difference


def updates_then_scaled(group: FuseGroup, scale: float, device: torch.device) -> torch.Tensor:
    """The old `FuseGroup.updates`: the matmul, then a pass over its output to scale it."""
    down = group.down.to(device, torch.float32, non_blocking=True)
    up = group.up.to(device, torch.float32, non_blocking=True)
    scales = torch.tensor([scale * alpha for alpha in group.alpha_scales], dtype=torch.float32)
    return torch.bmm(up, down).mul_(scales.to(device, non_blocking=True).view(-1, 1, 1))


class FuserBefore:
    """The old LoraFuser's fuse and restore (pristine copies beside the weights), without its interruption care."""

    def __init__(self, pipeline: object) -> None:
        self.pipeline = pipeline
        self._pristine: dict[LayerKey, torch.Tensor] = {}
        self._touched: list[LayerKey] = []

    def _weight(self, component: str, path: str) -> torch.Tensor:
        weight: torch.Tensor = getattr(self.pipeline, component).get_submodule(path).weight
        return weight

    @torch.no_grad()
    def fuse(self, plan: LoraPlan, scale: float) -> int:
        for group in plan.fuse_groups():
            weights = [self._weight(*key) for key in group.keys]
            for key, weight in zip(group.keys, weights, strict=True):
                if key not in self._pristine:
                    self._pristine[key] = weight.detach().clone()
            self._touched.extend(group.keys)
            updates = updates_then_scaled(group, scale, weights[0].device)
            torch._foreach_add_(weights, [u.view(w.shape) for u, w in zip(updates, weights, strict=True)])
        return len(self._touched)

    @torch.no_grad()
    def restore(self) -> list[str]:
        keys = list(dict.fromkeys(self._touched))
        if not keys:
            return []
        torch._foreach_copy_([self._weight(*key) for key in keys], [self._pristine[key] for key in keys])
        self._touched.clear()
        return self._altered(keys)

    def _altered(self, keys: list[LayerKey]) -> list[str]:
        weights = [self._weight(*key) for key in keys]
        originals = [self._pristine[key] for key in keys]
        on_gpu = bool(weights) and weights[0].device.type == "cuda"
        differs = (batched_differences if on_gpu else each_difference)(weights, originals)
        return [f"{c}.{p}" for (c, p), bad in zip(keys, differs, strict=True) if bad]
