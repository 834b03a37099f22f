"""Per-layer steps the fuser runs after its grouped low-rank adds: layers whose update is not a small product."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from gpu.engine.lora.groups import LayerKey


class DenseUpdate(Protocol):
    """A layer's update before alpha and scale, computed in fp32 on the device from the small tensors it keeps."""

    @property
    def nbytes(self) -> int: ...

    def dense(self, device: torch.device) -> torch.Tensor:
        """The update as an fp32 [out, in × kernel] matrix on `device`."""
        ...


class WeightStep(Protocol):
    """One layer's change, applied in place by the fuser to a weight it has kept a pristine copy of."""

    @property
    def key(self) -> LayerKey: ...

    @property
    def nbytes(self) -> int: ...

    def apply(self, weight: torch.Tensor, scale: float) -> None:
        """Change `weight` in place for the request's scale; at scale 0 it must leave every bit as it was."""
        ...


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class ProductUpdate:
    """up @ down."""

    up: torch.Tensor
    down: torch.Tensor

    @property
    def nbytes(self) -> int:
        return _nbytes(self.up, self.down)

    def dense(self, device: torch.device) -> torch.Tensor:
        return self.up.to(device, torch.float32) @ self.down.to(device, torch.float32)


@dataclass(frozen=True)
class HadamardUpdate:
    """(up_1 @ down_1) ⊙ (up_2 @ down_2): LoHa whose low-rank form would be larger than the update itself."""

    up_1: torch.Tensor
    down_1: torch.Tensor
    up_2: torch.Tensor
    down_2: torch.Tensor

    @property
    def nbytes(self) -> int:
        return _nbytes(self.up_1, self.down_1, self.up_2, self.down_2)

    def dense(self, device: torch.device) -> torch.Tensor:
        first = ProductUpdate(self.up_1, self.down_1).dense(device)
        return first.mul_(ProductUpdate(self.up_2, self.down_2).dense(device))


@dataclass(frozen=True)
class KroneckerUpdate:
    """first ⊗ second: LoKr whose low-rank form would be larger than the update itself (whole factors)."""

    first: torch.Tensor
    second: torch.Tensor

    @property
    def nbytes(self) -> int:
        return _nbytes(self.first, self.second)

    def dense(self, device: torch.device) -> torch.Tensor:
        return torch.kron(self.first.to(device, torch.float32), self.second.to(device, torch.float32))


@dataclass(frozen=True)
class DenseStep:
    """weight += scale · alpha_scale · update, the update made on the device (rounded once, as the grouped add)."""

    key: LayerKey
    update: DenseUpdate
    alpha_scale: float

    @property
    def nbytes(self) -> int:
        return self.update.nbytes

    def apply(self, weight: torch.Tensor, scale: float) -> None:
        if scale == 0:
            return
        update = self.update.dense(weight.device).view(weight.shape)
        weight.add_(update.mul_(scale * self.alpha_scale))
