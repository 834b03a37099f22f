"""DoRA: a layer's fused weight rescaled, per output feature (or input channel), to a trained magnitude.

With V = W + alpha_scale · ΔW (the layer's LoRA/LoHa/LoKr update) and m the file's magnitude, the trained weight is
D = m · V / ‖V‖, the norm taken over every axis but the magnitude's (peft `tuners/lora/dora.py`, LyCORIS
`apply_weight_decompose`). D depends on W itself, so it is no low-rank add: this step computes it on the device.

The request's scale s blends the base weight and the trained one, W' = W + s · (D − W), as LyCORIS'
`apply_dora_scale` and ComfyUI's `weight_decompose` apply a strength: s = 1 is the trained DoRA, s = 0 leaves the
base weight untouched (peft instead scales ΔW inside the norm, which at s = 0 still rescales W to m).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contracts.lora_formats import DoraAxis
from gpu.engine.lora.formats.steps import DenseUpdate
from gpu.engine.lora.groups import LayerKey

# LyCORIS adds float32's epsilon to the norm (its dora_scale is float32); peft adds nothing.
LYCORIS_NORM_EPS = float(torch.finfo(torch.float32).eps)
PEFT_NORM_EPS = 0.0


def column_norms(weight: torch.Tensor, axis: DoraAxis) -> torch.Tensor:
    """‖weight‖ over every axis but `axis`'s, shaped to broadcast against it ([out, 1, …] or [1, in, 1, …])."""
    ones = [1] * (weight.dim() - 1)
    if axis is DoraAxis.OUT:
        norms: torch.Tensor = weight.flatten(1).norm(dim=1)
        return norms.view(weight.shape[0], *ones)
    norms = weight.transpose(0, 1).flatten(1).norm(dim=1)
    return norms.view(1, weight.shape[1], *ones[1:])


def dora_weight(
    weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: DoraAxis, eps: float
) -> torch.Tensor:
    """D = m · (W + ΔW) / ‖W + ΔW‖ in the dtype given (a zero norm divides by the smallest normal, not by 0)."""
    fused = weight + delta
    norms = (column_norms(fused, axis) + eps).clamp_min(torch.finfo(fused.dtype).tiny)
    return fused * (magnitude / norms)


@dataclass(frozen=True)
class DoraStep:
    """One DoRA layer: weight += s · (D − weight), computed in fp32 on the weight's device, rounded once."""

    key: LayerKey
    update: DenseUpdate
    alpha_scale: float
    magnitude: torch.Tensor  # broadcastable to the weight: [out, 1, …] or [1, in, 1, …]
    axis: DoraAxis
    eps: float

    @property
    def nbytes(self) -> int:
        return self.update.nbytes + self.magnitude.numel() * self.magnitude.element_size()

    def apply(self, weight: torch.Tensor, scale: float) -> None:
        if scale == 0:
            return
        base = weight.float()
        delta = self.update.dense(weight.device).view(weight.shape).mul_(self.alpha_scale)
        magnitude = self.magnitude.to(weight.device, torch.float32)
        target = dora_weight(base, delta, magnitude, self.axis, self.eps)
        weight.add_(target.sub_(base).mul_(scale))
