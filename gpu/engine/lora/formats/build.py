"""One checked layer of a LoCon/LoHa/LoKr/DoRA file as what the fuser adds: a low-rank product when that is exact
and no larger than the update itself (it then joins the grouped fuse), else a per-layer step (steps.py, dora.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from contracts.lora_formats import AdapterKind
from contracts.lora_keys import LoraLayer
from gpu.engine.lora.formats.algebra import Product, cp_product, hadamard_factors, kronecker_factors
from gpu.engine.lora.formats.dora import LYCORIS_NORM_EPS, PEFT_NORM_EPS, DoraStep
from gpu.engine.lora.formats.steps import (
    DenseStep,
    DenseUpdate,
    HadamardUpdate,
    KroneckerUpdate,
    ProductUpdate,
    WeightStep,
)
from gpu.engine.lora.groups import LayerKey

# The algebra runs in float64 on the CPU when the plan is made; what the plan keeps is float32 (products of two
# fp16/bf16 numbers are exact in float32, so LoHa's and LoKr's expanded factors lose nothing for half-precision files).
_MATH = torch.float64
_KEPT = torch.float32


@dataclass(frozen=True)
class LowRank:
    """update = up @ down, to be added as a plain LoRA layer is: weight += scale · alpha_scale · up @ down."""

    up: torch.Tensor
    down: torch.Tensor
    alpha_scale: float


@dataclass(frozen=True)
class _Composite:
    """A layer's update as one product, the Hadamard product of two (LoHa) or the Kronecker product of two (LoKr)."""

    kind: str  # "product" | "hadamard" | "kronecker"
    first: Product
    second: Product | None = None

    @property
    def rank(self) -> int:
        return self.first.inner * (self.second.inner if self.second is not None else 1)

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.second is None:
            return self.first.factors()
        combine = hadamard_factors if self.kind == "hadamard" else kronecker_factors
        return combine(self.first, self.second)

    def dense_update(self) -> DenseUpdate:
        if self.second is None:
            up, down = self.first.factors()
            return ProductUpdate(_kept(up), _kept(down))
        if self.kind == "kronecker":
            return KroneckerUpdate(_kept(self.first.matrix()), _kept(self.second.matrix()))
        (up_1, down_1), (up_2, down_2) = self.first.factors(), self.second.factors()
        return HadamardUpdate(_kept(up_1), _kept(down_1), _kept(up_2), _kept(down_2))


def _kept(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(_KEPT).contiguous()


def layer_update(
    key: LayerKey, layer: LoraLayer, tensors: Mapping[str, torch.Tensor], weight_shape: tuple[int, ...]
) -> LowRank | WeightStep:
    """What the fuser adds for this layer (its format and shapes already checked by contracts.lora_formats)."""
    alpha = float(tensors[layer.alpha_key].item()) if layer.alpha_key is not None else 0.0
    # kohya/LyCORIS: alpha / rank; an absent or zero alpha means no scaling (LyCORIS sets alpha = rank then).
    alpha_scale = alpha / layer.rank if alpha else 1.0
    out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
    if layer.kind is AdapterKind.LORA and layer.dora is None:
        # A plain LoRA/LoCon layer of such a file: kept in the file's dtype, as the plain path keeps it.
        up, down = tensors[layer.parts["up"]], tensors[layer.parts["down"]]
        return LowRank(up.reshape(out, -1), down.reshape(down.shape[0], -1), alpha_scale)
    part = {name: tensors[tensor_name].to(_MATH) for name, tensor_name in layer.parts.items()}
    composite = _composite(layer.kind, part, weight_shape)
    if layer.dora is not None:
        magnitude_part = "dora_scale" if "dora_scale" in part else "magnitude"
        magnitude = _magnitude(part[magnitude_part], weight_shape, layer.dora.value)
        eps = LYCORIS_NORM_EPS if magnitude_part == "dora_scale" else PEFT_NORM_EPS
        return DoraStep(key, composite.dense_update(), alpha_scale, magnitude, layer.dora, eps)
    if composite.second is None or composite.rank * (out + fan_in) < out * fan_in:
        up, down = composite.low_rank()
        return LowRank(_kept(up), _kept(down), alpha_scale)
    return DenseStep(key, composite.dense_update(), alpha_scale)


def _magnitude(tensor: torch.Tensor, weight_shape: tuple[int, ...], axis: str) -> torch.Tensor:
    """The magnitude shaped to broadcast against the weight (peft's conv magnitude is [1, out, 1, 1])."""
    ones = [1] * (len(weight_shape) - 1)
    shape = [weight_shape[0], *ones] if axis == "out" else [1, weight_shape[1], *ones[1:]]
    return _kept(tensor.reshape(shape))


def _composite(kind: AdapterKind, part: Mapping[str, torch.Tensor], weight_shape: tuple[int, ...]) -> _Composite:
    flat = math.prod(weight_shape[1:])
    if kind is AdapterKind.LORA:
        return _Composite("product", Product(part["up"].reshape(weight_shape[0], -1), part["down"].reshape(-1, flat)))
    if kind is AdapterKind.LOCON_TUCKER:
        up = part["up"].reshape(weight_shape[0], -1)
        return _Composite("product", cp_product(part["mid"], up.T, part["down"].flatten(1)))
    if kind is AdapterKind.LOHA:
        first = Product(part["hada_w1_a"], part["hada_w1_b"])
        return _Composite("hadamard", first, Product(part["hada_w2_a"], part["hada_w2_b"]))
    if kind is AdapterKind.LOHA_TUCKER:
        first = cp_product(part["hada_t1"], part["hada_w1_a"], part["hada_w1_b"])
        return _Composite("hadamard", first, cp_product(part["hada_t2"], part["hada_w2_a"], part["hada_w2_b"]))
    return _Composite("kronecker", _lokr_first(part), _lokr_second(part, math.prod(weight_shape[2:])))


def _lokr_first(part: Mapping[str, torch.Tensor]) -> Product:
    if "lokr_w1" in part:
        return Product(part["lokr_w1"])
    return Product(part["lokr_w1_a"], part["lokr_w1_b"])


def _lokr_second(part: Mapping[str, torch.Tensor], kernel: int) -> Product:
    """The second factor as [b, d × kernel]: a convolution's kernel rides on it (LyCORIS unsqueezes w1 to 4-D for
    torch.kron, which is the same matrix)."""
    if "lokr_w2" in part:
        return Product(part["lokr_w2"].flatten(1))
    if "lokr_t2" in part:
        return cp_product(part["lokr_t2"], part["lokr_w2_a"], part["lokr_w2_b"])
    return Product(part["lokr_w2_a"], part["lokr_w2_b"].flatten(1))
