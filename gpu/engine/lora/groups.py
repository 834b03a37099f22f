"""A LoRA plan's deltas stacked by shape, so one batched matmul computes a whole group's updates.

A full-size SDXL LoRA touches ~560 layers of a dozen distinct shapes. Fused layer by layer, that is ~2,000 small
kernel launches per swap; stacked, it is a few per group. The stacks are made once, when the plan is made (and
cached with it); the plan's per-layer deltas become views into them, so nothing is held twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MiB = 1024 * 1024
# A group's fp32 updates exist all at once while it is fused: groups are cut so that they never pass this size
# (360 SDXL layers of 1280×1280 would need 2.4 GB in one piece).
MAX_GROUP_UPDATE_BYTES = 128 * MiB
# On a CPU a layer per group: nothing is launched, and large temporaries only cost memory traffic (full-size SDXL,
# bf16, this 2-core machine: fuse 444 ms a layer at a time against 582–1,734 ms in 128 MiB groups).
CPU_GROUP_UPDATE_BYTES = 0


def group_update_bytes(device: torch.device) -> int:
    """The group size cap for fusing on this device."""
    return MAX_GROUP_UPDATE_BYTES if device.type == "cuda" else CPU_GROUP_UPDATE_BYTES


LayerKey = tuple[str, str]


@dataclass(frozen=True)
class FuseGroup:
    """Layers whose updates have the same shape: `up[i] @ down[i]` (times `alpha_scales[i]`) is layer i's.
    The alpha scales stay Python floats: multiplied by the request's scale in double precision and rounded once to
    fp32, as the per-layer fuse did. The scale goes into the matmul (its `alpha`, or `up`'s rows when the layers'
    alphas differ), never in a pass over the (layers, out, in) updates."""

    keys: tuple[LayerKey, ...]
    down: torch.Tensor  # (layers, rank, in_features × kernel area)
    up: torch.Tensor  # (layers, out_features, rank)
    alpha_scales: tuple[float, ...]

    def _factors(self, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(up, down, alpha) in fp32 on `device`: up @ down times alpha is every layer's update."""
        down = self.down.to(device, torch.float32, non_blocking=True)
        up = self.up.to(device, torch.float32, non_blocking=True)
        first = self.alpha_scales[0]
        if all(alpha == first for alpha in self.alpha_scales):
            return up, down, scale * first
        # Per-layer scales on the small `up` (layers × out × rank), not on the updates (layers × out × in).
        scales = torch.tensor([scale * alpha for alpha in self.alpha_scales], dtype=torch.float32)
        return up * scales.to(device, non_blocking=True).view(-1, 1, 1), down, 1.0

    def updates(self, scale: float, device: torch.device) -> torch.Tensor:
        """Every layer's fp32 update, (layers, out, in × kernel area): one batched matmul, the scale inside it."""
        up, down, alpha = self._factors(scale, device)
        empty = torch.empty(up.shape[0], up.shape[1], down.shape[2], dtype=torch.float32, device=device)
        # beta=0: the (uninitialised) input is ignored, not read; alpha scales the product in the matmul itself.
        return torch.baddbmm(empty, up, down, beta=0, alpha=alpha)

    def add_updates_to(self, base: torch.Tensor, scale: float) -> None:
        """base += every layer's update, in place, base being (layers, out, in × kernel area) fp32 on the device: one
        batched matmul that adds the product to what it reads (rounded once in fp32, as `base + updates` would)."""
        up, down, alpha = self._factors(scale, base.device)
        base.baddbmm_(up, down, alpha=alpha)

    def pinned(self) -> FuseGroup:
        """The same group in page-locked host memory, for full-speed copies to the GPU."""
        return FuseGroup(self.keys, self.down.pin_memory(), self.up.pin_memory(), self.alpha_scales)


def _shape_key(down: torch.Tensor, up: torch.Tensor) -> tuple[object, ...]:
    return (down.shape[0], down[0].numel(), up.shape[0], down.dtype, up.dtype, down.device, up.device)


def stack_groups(
    layers: list[tuple[LayerKey, torch.Tensor, torch.Tensor, float]], max_update_bytes: int = MAX_GROUP_UPDATE_BYTES
) -> tuple[FuseGroup, ...]:
    """Stack (key, down, up, alpha_scale) layers by (rank, fan-in, fan-out, dtype), each group under the size cap;
    layers keep their order within a group."""
    by_shape: dict[tuple[object, ...], list[tuple[LayerKey, torch.Tensor, torch.Tensor, float]]] = {}
    for layer in layers:
        by_shape.setdefault(_shape_key(layer[1], layer[2]), []).append(layer)
    groups = []
    for members in by_shape.values():
        rank, fan_in, fan_out = members[0][1].shape[0], members[0][1][0].numel(), members[0][2].shape[0]
        per_chunk = max(1, max_update_bytes // (fan_out * fan_in * 4))
        for start in range(0, len(members), per_chunk):
            chunk = members[start : start + per_chunk]
            groups.append(
                FuseGroup(
                    keys=tuple(key for key, *_ in chunk),
                    down=torch.stack([down.reshape(rank, fan_in) for _, down, _, _ in chunk]),
                    up=torch.stack([up.reshape(fan_out, rank) for _, _, up, _ in chunk]),
                    alpha_scales=tuple(alpha for *_, alpha in chunk),
                )
            )
    return tuple(groups)
