"""Which adapter format one layer's tensors make (LoRA/LoCon, LoHa, LoKr, each optionally with DoRA) and whether they
fit the layer: decided from tensor names and shapes alone, by identity at upload and by the worker at load alike.

The shapes are those LyCORIS (`lycoris/modules/{locon,loha,lokr}.py`) and peft (`tuners/{lora,loha,lokr}`) write;
docs/worker.md ("LoRA formats") gives each format's formula and where it was read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from contracts.lora_rejections import LoraRejectedError, LoraRejectReason, rejected

# The largest rank accepted, by identity at upload and by the worker (gpu/engine/lora/) at load.
MAX_RANK = 1024
Shape = tuple[int, ...]


class AdapterKind(StrEnum):
    """How a layer's update is built from its tensors."""

    LORA = "lora"  # up @ down: LoRA, and LoCon on convolutions (3×3 kernels included)
    LOCON_TUCKER = "locon_tucker"  # LoCon with a CP core: down [r, in, 1, 1], mid [r, r, kh, kw], up [out, r, 1, 1]
    LOHA = "loha"  # (w1_a @ w1_b) ⊙ (w2_a @ w2_b)
    LOHA_TUCKER = "loha_tucker"  # the same, each product rebuilt from a CP core t1/t2 over a convolution's kernel
    LOKR = "lokr"  # w1 ⊗ w2, either factor whole or a product w_a @ w_b (w2 optionally with a CP core t2)


class DoraAxis(StrEnum):
    """Which norm a DoRA magnitude rescales."""

    OUT = "out"  # one magnitude per output feature (peft; LyCORIS' default `wd_on_out=True`)
    IN = "in"  # one per input channel, over outputs and kernel (LyCORIS with `wd_on_out=False`)


# The parts (canonical names of a layer's tensors, contracts.lora_layouts) that make each kind of update.
FAMILY_PARTS: Mapping[str, tuple[str, ...]] = {
    "LoRA": ("down", "up", "mid"),
    "LoHa": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "LoKr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
}
DORA_PARTS = ("dora_scale", "magnitude")  # LyCORIS/kohya `dora_scale`, peft `lora_magnitude_vector`
# Parts that only the worker's own reader handles: diffusers' converter refuses them or drops them silently.
EXTENDED_PARTS = frozenset({"mid", *FAMILY_PARTS["LoHa"], *FAMILY_PARTS["LoKr"], *DORA_PARTS})
WEIGHT_PARTS = frozenset(part for parts in FAMILY_PARTS.values() for part in parts)


@dataclass(frozen=True)
class LayerFormat:
    """One layer's verdict: its kind, its rank (what alpha divides), whether alpha applies, its DoRA axis."""

    kind: AdapterKind
    # LoRA, LoCon, LoHa: the trained rank; LoKr: the rank of its factorized part, or the rank of its Kronecker
    # product at most when neither factor is factorized (LyCORIS' "full matrix" mode, which ignores alpha).
    rank: int
    alpha_applies: bool
    dora: DoraAxis | None


class _Layer:
    """One layer's parts, their shapes and the layer's weight shape, with the checks every format shares."""

    def __init__(self, layer: str, parts: Mapping[str, str], shapes: Mapping[str, Shape], weight: Shape) -> None:
        self.layer, self.parts, self.weight = layer, parts, weight
        self._shapes = shapes
        self.out, self.fan_in, self.kernel = weight[0], math.prod(weight[1:]), weight[2:]
        self.conv = len(weight) == 4

    def shape(self, part: str) -> Shape:
        return self._shapes[self.parts[part]]

    def first(self, *parts: str) -> str:
        """The tensor name of the first of these parts the layer has (the one a refusal names)."""
        return next(self.parts[part] for part in parts if part in self.parts)

    def require(self, *needed: str) -> None:
        missing = [part for part in needed if part not in self.parts]
        if missing:
            raise rejected(
                LoraRejectReason.INCOMPLETE_LAYER, min(self.parts.values()), f"has no {missing[0]} weight beside it"
            )

    def rank_at_most(self, part: str, rank: int) -> None:
        if rank > MAX_RANK:
            raise rejected(LoraRejectReason.RANK_TOO_LARGE, self.parts[part], f"has rank {rank}, over {MAX_RANK}")

    def mismatch(self, *parts: str) -> LoraRejectedError:
        listed = ", ".join(f"{part} {list(self.shape(part))}" for part in parts if part in self.parts)
        return rejected(
            LoraRejectReason.SHAPE_MISMATCH,
            self.first(*parts),
            f"does not fit {self.layer[:120]}: {listed}, layer weight {list(self.weight)}",
        )


def layer_format(layer: str, parts: Mapping[str, str], shapes: Mapping[str, Shape], weight: Shape) -> LayerFormat:
    """The format of one layer's tensors (`parts`: part → tensor name, `shapes`: tensor name → shape) over a layer
    of weight shape `weight` ([out, in] or [out, in, kh, kw]); LoraRejectedError when they do not make one."""
    at = _Layer(layer, parts, shapes, weight)
    families = [family for family, names in FAMILY_PARTS.items() if any(name in parts for name in names)]
    if not families:
        raise rejected(LoraRejectReason.INCOMPLETE_LAYER, min(parts.values()), "has no down weight beside it")
    if len(families) > 1:
        first = at.first(*FAMILY_PARTS[families[1]])
        raise rejected(LoraRejectReason.UNSUPPORTED_FORMAT, first, f"mixes {' and '.join(families)} in one layer")
    if all(part in parts for part in DORA_PARTS):
        raise rejected(LoraRejectReason.UNSUPPORTED_FORMAT, parts["magnitude"], "is a second DoRA magnitude")
    kind, rank, alpha_applies = {"LoRA": _lora, "LoHa": _loha, "LoKr": _lokr}[families[0]](at)
    _within_size(at, FAMILY_PARTS[families[0]])
    return LayerFormat(kind, rank, alpha_applies, _dora_axis(at))


def _lora(at: _Layer) -> tuple[AdapterKind, int, bool]:
    at.require("down", "up")
    down, up = at.shape("down"), at.shape("up")
    if len(down) not in (2, 4) or len(up) not in (2, 4):
        raise at.mismatch("down", "mid", "up")
    rank = down[0]
    at.rank_at_most("down", rank)
    # Linear weight [out, in] takes down [r, in]; Conv2d [out, in, kh, kw] takes down [r, in, kh, kw] (kohya and
    # LyCORIS LoCon, peft); up is [out, r] or [out, r, 1, 1] for either.
    up_fits = up[:2] == (at.out, rank) and all(size == 1 for size in up[2:])
    if "mid" not in at.parts:
        if not (rank > 0 and down[1:] == at.weight[1:] and up_fits):
            raise at.mismatch("down", "up")
        return AdapterKind.LORA, rank, True
    # LyCORIS' LoCon with use_tucker on a k×k convolution: a 1×1 down, the k×k core, a 1×1 up.
    mid_fits = at.conv and at.shape("mid") == (rank, rank, *at.kernel)
    if not (rank > 0 and mid_fits and down == (rank, at.weight[1], 1, 1) and up_fits):
        raise at.mismatch("down", "mid", "up")
    return AdapterKind.LOCON_TUCKER, rank, True


def _loha(at: _Layer) -> tuple[AdapterKind, int, bool]:
    at.require("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    parts = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    w1a, w1b, w2a, w2b = (at.shape(part) for part in parts[:4])
    if "hada_t1" in at.parts or "hada_t2" in at.parts:
        at.require("hada_t1", "hada_t2")
        # CP form (LyCORIS use_tucker, peft use_effective_conv2d): w_a [r, out], w_b [r, in], t [r, r, kh, kw].
        rank = w1a[0] if w1a else 0
        at.rank_at_most("hada_w1_a", rank)
        core = (rank, rank, *at.kernel)
        fits = at.conv and (w1a, w2a) == ((rank, at.out),) * 2 and (w1b, w2b) == ((rank, at.weight[1]),) * 2
        if not (rank > 0 and fits and at.shape("hada_t1") == core and at.shape("hada_t2") == core):
            raise at.mismatch(*parts)
        return AdapterKind.LOHA_TUCKER, rank, True
    # w_a [out, r], w_b [r, in × kh × kw]; LyCORIS builds both products with one rank (and cannot load two).
    rank = w1b[0] if w1b else 0
    at.rank_at_most("hada_w1_b", rank)
    if not (rank > 0 and (w1a, w2a) == ((at.out, rank),) * 2 and (w1b, w2b) == ((rank, at.fan_in),) * 2):
        raise at.mismatch(*parts[:4])
    return AdapterKind.LOHA, rank, True


def _lokr(at: _Layer) -> tuple[AdapterKind, int, bool]:
    parts = FAMILY_PARTS["LoKr"]
    (a, c), rank_1 = _lokr_factor(at, "lokr_w1")
    (b, d), rank_2 = _lokr_second_factor(at)
    if a * b != at.out or c * d != (at.weight[1] if at.conv else at.fan_in):
        raise at.mismatch(*parts)
    if rank_1 and rank_2 and rank_1 != rank_2:
        raise at.mismatch(*parts)
    rank = rank_1 or rank_2
    if rank:
        return AdapterKind.LOKR, rank, True
    # Neither factor is a product: LyCORIS ignores alpha ("full matrix"); the Kronecker product's rank is at most
    # the product of its factors' ranks.
    kernel = math.prod(at.kernel)
    return AdapterKind.LOKR, min(a, c) * min(b, d * kernel), False


def _lokr_factor(at: _Layer, whole: str) -> tuple[tuple[int, int], int]:
    """(rows, columns) of the first Kronecker factor and the rank of its product (0 when it is whole)."""
    left, right = f"{whole}_a", f"{whole}_b"
    if whole in at.parts:
        if left in at.parts or right in at.parts:
            raise rejected(LoraRejectReason.UNSUPPORTED_FORMAT, at.parts[whole], f"is whole beside {left}/{right}")
        shape = at.shape(whole)
        if len(shape) != 2:
            raise at.mismatch(whole)
        return (shape[0], shape[1]), 0
    if left not in at.parts and right not in at.parts:
        raise rejected(LoraRejectReason.INCOMPLETE_LAYER, min(at.parts.values()), f"has no {whole} weight beside it")
    at.require(left, right)
    w_a, w_b = at.shape(left), at.shape(right)
    if len(w_a) != 2 or len(w_b) != 2 or w_a[1] != w_b[0] or w_a[1] == 0:
        raise at.mismatch(left, right)
    at.rank_at_most(left, w_a[1])
    return (w_a[0], w_b[1]), w_a[1]


def _lokr_second_factor(at: _Layer) -> tuple[tuple[int, int], int]:
    """(rows, input channels) of the second Kronecker factor, which carries a convolution's kernel, and its rank."""
    parts = ("lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    if "lokr_w2" in at.parts:
        if "lokr_t2" in at.parts:
            raise rejected(LoraRejectReason.UNSUPPORTED_FORMAT, at.parts["lokr_t2"], "is a CP core beside a whole w2")
        if not at.conv:
            return _lokr_factor(at, "lokr_w2")
        shape = at.shape("lokr_w2")  # [b, d, kh, kw]
        if "lokr_w2_a" in at.parts or "lokr_w2_b" in at.parts or len(shape) != 4 or shape[2:] != at.kernel:
            raise at.mismatch(*parts)
        return (shape[0], shape[1]), 0
    if "lokr_t2" not in at.parts and not at.conv:
        return _lokr_factor(at, "lokr_w2")
    if "lokr_w2_a" not in at.parts and "lokr_w2_b" not in at.parts:
        raise rejected(LoraRejectReason.INCOMPLETE_LAYER, min(at.parts.values()), "has no lokr_w2 weight beside it")
    at.require("lokr_w2_a", "lokr_w2_b")
    w_a, w_b = at.shape("lokr_w2_a"), at.shape("lokr_w2_b")
    if "lokr_t2" in at.parts:
        # CP form: t2 [r, r, kh, kw], w2_a [r, b], w2_b [r, d].
        rank = w_a[0] if w_a else 0
        at.rank_at_most("lokr_w2_a", rank)
        fits = len(w_a) == len(w_b) == 2 and w_b[0] == rank and at.shape("lokr_t2") == (rank, rank, *at.kernel)
        if not (rank > 0 and at.conv and fits):
            raise at.mismatch(*parts)
        return (w_a[1], w_b[1]), rank
    # A convolution without a core: w2_a [b, r], w2_b [r, d × kh × kw] (LyCORIS, peft) or [r, d, kh, kw].
    rank = w_a[1] if len(w_a) == 2 else 0
    at.rank_at_most("lokr_w2_a", rank)
    kernel = math.prod(at.kernel)
    flat = len(w_b) == 2 and w_b[1] % kernel == 0
    shaped = len(w_b) == 4 and w_b[2:] == at.kernel
    if not (rank > 0 and w_b[0] == rank and (flat or shaped)):
        raise at.mismatch(*parts)
    return (w_a[0], w_b[1] // kernel if flat else w_b[1]), rank


def _within_size(at: _Layer, family: tuple[str, ...]) -> None:
    """No layer's adapter may hold more numbers than a MAX_RANK LoRA of that layer: the bound plain LoRAs have,
    for every format (LoHa: rank ≤ 512; whole LoKr factors fit any layer they multiply to)."""
    numbers = sum(math.prod(at.shape(part)) for part in family if part in at.parts)
    limit = MAX_RANK * (at.out + at.fan_in)
    if numbers > limit:
        raise rejected(
            LoraRejectReason.RANK_TOO_LARGE,
            at.first(*family),
            f"and the rest of its layer hold {numbers} numbers, over the {limit} of a rank-{MAX_RANK} LoRA there",
        )


def _dora_axis(at: _Layer) -> DoraAxis | None:
    ones = (1,) * (len(at.weight) - 1)
    if "dora_scale" in at.parts:
        # LyCORIS: [out, 1, …] with wd_on_out (its default), [1, in, 1, …] without.
        shape = at.shape("dora_scale")
        if shape == (at.out, *ones):
            return DoraAxis.OUT
        if shape == (1, at.weight[1], *ones[1:]):
            return DoraAxis.IN
        raise at.mismatch("dora_scale")
    if "magnitude" in at.parts:
        # peft: [out] for a Linear, [1, out, 1, 1] for a Conv2d (its weight norm, transposed).
        if at.shape("magnitude") == ((1, at.out, 1, 1) if at.conv else (at.out,)):
            return DoraAxis.OUT
        raise at.mismatch("magnitude")
    return None
