"""LoCon/LoHa/LoKr/DoRA files for the tiny SDXL built offline from seeded random tensors, and each format's fused
weight in float64 straight from its formula (as LyCORIS `lycoris/modules/*.py`, `functional/*` and peft
`tuners/lora/dora.py` write it), to check the worker's fuse against."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_text_model_", "text_encoder_2": "lora_te2_text_model_"}
LYCORIS_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class FormatLayer:
    """One layer of a test file: the tensors under their suffix (`hada_w1_a`, `lora_down.weight`, `alpha`, …)."""

    component: str
    path: str  # as the target table names it (no `text_model.`)
    tensors: Mapping[str, torch.Tensor]
    peft: bool = False  # peft's dotted names (`unet.<path>.lora_A.weight`) instead of kohya's flat ones

    def names(self) -> dict[str, torch.Tensor]:
        if self.peft:
            return {f"{self.component}.{self.path}.{suffix}": t for suffix, t in self.tensors.items()}
        flat = KOHYA_PREFIX[self.component] + self.path.replace(".", "_")
        return {f"{flat}.{suffix}": t for suffix, t in self.tensors.items()}


@dataclass
class FormatFile:
    """A file of one format over some layers, and the float64 fused weight each layer must get."""

    layers: list[FormatLayer] = field(default_factory=list)

    def state(self) -> dict[str, torch.Tensor]:
        # Cloned: layers may share one alpha tensor, and safetensors refuses to save tensors that share memory.
        return {name: t.clone().contiguous() for layer in self.layers for name, t in layer.names().items()}


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def _rebuild_tucker(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """lycoris/functional/general.py rebuild_tucker."""
    return torch.einsum("i j ..., i p, j r -> p r ...", _f(core), _f(w_a), _f(w_b))


def _alpha_scale(tensors: Mapping[str, torch.Tensor], rank: int) -> float:
    alpha = float(tensors["alpha"]) if "alpha" in tensors else 0.0
    return alpha / rank if alpha else 1.0


def reference_delta(tensors: Mapping[str, torch.Tensor], weight_shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW (alpha applied) of one layer in float64, by the formula of its format."""
    t = tensors
    if "hada_w1_a" in t:
        if "hada_t1" in t:  # LoHa CP: peft make_weight_cp / LyCORIS HadaWeightTucker
            cp = "i j k l, j r, i p -> p r k l"
            first = torch.einsum(cp, _f(t["hada_t1"]), _f(t["hada_w1_b"]), _f(t["hada_w1_a"]))
            second = torch.einsum(cp, _f(t["hada_t2"]), _f(t["hada_w2_b"]), _f(t["hada_w2_a"]))
        else:  # LyCORIS HadaWeight: (w1a @ w1b) * (w2a @ w2b)
            first, second = _f(t["hada_w1_a"]) @ _f(t["hada_w1_b"]), _f(t["hada_w2_a"]) @ _f(t["hada_w2_b"])
        return (first * second).reshape(weight_shape) * _alpha_scale(t, t["hada_w1_b"].shape[0])
    if any(name.startswith("lokr_") for name in t):
        w1 = _f(t["lokr_w1"]) if "lokr_w1" in t else _f(t["lokr_w1_a"]) @ _f(t["lokr_w1_b"])
        if "lokr_w2" in t:
            w2 = _f(t["lokr_w2"])
        elif "lokr_t2" in t:
            w2 = _rebuild_tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        else:
            w2 = _f(t["lokr_w2_a"]) @ _f(t["lokr_w2_b"]).flatten(1)
        for _ in range(w2.dim() - w1.dim()):  # lycoris/functional/lokr.py make_kron
            w1 = w1.unsqueeze(-1)
        factorized = "lokr_w1_b" if "lokr_w1_b" in t else "lokr_w2_b" if "lokr_w2_b" in t else None
        scale = _alpha_scale(t, t[factorized].shape[0]) if factorized else 1.0  # whole factors ignore alpha
        return torch.kron(w1.contiguous(), w2.contiguous()).reshape(weight_shape) * scale
    up = _f(t["lora_up.weight" if "lora_up.weight" in t else "lora_B.weight"])
    down = _f(t["lora_down.weight" if "lora_down.weight" in t else "lora_A.weight"])
    rank = down.shape[0]
    if "lora_mid.weight" in t:  # lycoris/modules/locon.py make_weight with tucker
        delta = _rebuild_tucker(t["lora_mid.weight"], up.reshape(up.shape[0], -1).T, down.reshape(rank, -1))
    else:
        delta = up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)
    return delta.reshape(weight_shape) * _alpha_scale(t, rank)


def reference_weight(tensors: Mapping[str, torch.Tensor], weight: torch.Tensor, scale: float) -> torch.Tensor:
    """The layer's fused weight in float64: W + s·ΔW, or for DoRA W + s·(D − W) with D the trained DoRA weight."""
    base = _f(weight)
    delta = reference_delta(tensors, tuple(weight.shape))
    if "dora_scale" not in tensors and "lora_magnitude_vector" not in tensors:
        return base + scale * delta
    fused = base + delta
    ones = [1] * (base.dim() - 1)
    if "dora_scale" in tensors:  # LyCORIS apply_weight_decompose: the axis is the one dora_scale is not 1 on
        magnitude = _f(tensors["dora_scale"])
        if magnitude.shape[0] == base.shape[0]:
            norm = fused.reshape(base.shape[0], -1).norm(dim=1).reshape(base.shape[0], *ones)
        else:
            norm = fused.transpose(0, 1).reshape(base.shape[1], -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(base.shape[1], *ones).transpose(0, 1)
        trained = fused * (magnitude / (norm + LYCORIS_EPS))
    else:  # peft: magnitude / ‖W + ΔW‖ per output feature, no epsilon
        magnitude = _f(tensors["lora_magnitude_vector"]).reshape(base.shape[0], *ones)
        norms: torch.Tensor = fused.flatten(1).norm(dim=1)
        trained = fused * (magnitude / norms.reshape(base.shape[0], *ones))
    result: torch.Tensor = base + scale * (trained - base)
    return result


def reduction_length(tensors: Mapping[str, torch.Tensor], weight_shape: tuple[int, ...]) -> int:
    """The longest sum in the layer's fp32 computation: its (expanded) rank, or the norm's length for DoRA."""
    ranks = [t.shape[0] for name, t in tensors.items() if name.endswith(("_b", "down.weight", "lora_A.weight"))]
    longest = math.prod(ranks) if ranks else 1
    if "dora_scale" in tensors or "lora_magnitude_vector" in tensors:
        longest += math.prod(weight_shape)
    return max(longest, max(weight_shape)) + 16


def _random(generator: torch.Generator, *shape: int, std: float = 0.3) -> torch.Tensor:
    """Seeded normal values in fp16, the dtype trainers save in."""
    return (torch.randn(*shape, generator=generator) * std).to(torch.float16)


def loha_file(seed: int = 1) -> FormatFile:
    """LoHa (LyCORIS kohya names): Linear layers low-rank and dense (rank 8 on 64×256), a text encoder, a 3×3 conv
    flattened and one with CP cores, alphas set."""
    g = torch.Generator().manual_seed(seed)

    def hada(out: int, fan_in: int, rank: int) -> dict[str, torch.Tensor]:
        return {
            "hada_w1_a": _random(g, out, rank),
            "hada_w1_b": _random(g, rank, fan_in),
            "hada_w2_a": _random(g, out, rank),
            "hada_w2_b": _random(g, rank, fan_in),
            "alpha": torch.tensor(float(rank) / 2, dtype=torch.float16),
        }

    tucker = {
        "hada_t1": _random(g, 3, 3, 3, 3),
        "hada_w1_a": _random(g, 3, 64),
        "hada_w1_b": _random(g, 3, 32),
        "hada_t2": _random(g, 3, 3, 3, 3),
        "hada_w2_a": _random(g, 3, 64),
        "hada_w2_b": _random(g, 3, 32),
        "alpha": torch.tensor(3.0),
    }
    return FormatFile(
        [
            FormatLayer("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", hada(64, 64, 2)),
            FormatLayer("unet", "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", hada(64, 256, 8)),
            FormatLayer("unet", "down_blocks.0.resnets.0.conv1", hada(32, 32 * 9, 2)),
            FormatLayer("unet", "down_blocks.1.resnets.0.conv1", tucker),
            FormatLayer("text_encoder", "encoder.layers.0.self_attn.q_proj", hada(32, 32, 2)),
        ]
    )


def lokr_file(seed: int = 2) -> FormatFile:
    """LoKr (LyCORIS kohya names): each factor whole or factorized, a conv with a flattened w2_b and one with a CP
    core, a whole-factor layer with an alpha that LyCORIS ignores, and a prime width (37 = 1 × 37)."""
    g = torch.Generator().manual_seed(seed)
    alpha = {"alpha": torch.tensor(1.0)}
    return FormatFile(
        [
            FormatLayer(
                "unet",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
                {"lokr_w1": _random(g, 8, 8), "lokr_w2_a": _random(g, 8, 2), "lokr_w2_b": _random(g, 2, 8)} | alpha,
            ),
            FormatLayer(
                "unet",
                "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
                {
                    "lokr_w1_a": _random(g, 16, 2),
                    "lokr_w1_b": _random(g, 2, 8),
                    "lokr_w2_a": _random(g, 32, 2),
                    "lokr_w2_b": _random(g, 2, 8),
                }
                | alpha,
            ),
            FormatLayer(
                "unet",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
                {"lokr_w1": _random(g, 4, 4), "lokr_w2": _random(g, 16, 16, std=0.05)} | {"alpha": torch.tensor(8.0)},
            ),
            FormatLayer(
                "unet",
                "down_blocks.0.resnets.0.conv1",
                {"lokr_w1": _random(g, 4, 4), "lokr_w2_a": _random(g, 8, 2), "lokr_w2_b": _random(g, 2, 8 * 9)} | alpha,
            ),
            FormatLayer(
                "unet",
                "mid_block.resnets.0.conv1",
                {
                    "lokr_w1": _random(g, 4, 4),
                    "lokr_t2": _random(g, 2, 2, 3, 3),
                    "lokr_w2_a": _random(g, 2, 16),
                    "lokr_w2_b": _random(g, 2, 16),
                }
                | alpha,
            ),
            FormatLayer(
                "text_encoder_2",
                "encoder.layers.0.mlp.fc1",
                {"lokr_w1": _random(g, 1, 2), "lokr_w2": _random(g, 37, 16, std=0.1)},
            ),
        ]
    )


def locon_file(seed: int = 3) -> FormatFile:
    """LoCon (LyCORIS kohya names): a Linear layer, a plain 3×3 conv, a 3×3 conv with a CP core (lora_mid), a 1×1."""
    g = torch.Generator().manual_seed(seed)
    alpha = {"alpha": torch.tensor(2.0)}
    return FormatFile(
        [
            FormatLayer(
                "unet",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q",
                {"lora_down.weight": _random(g, 4, 64), "lora_up.weight": _random(g, 64, 4)} | alpha,
            ),
            FormatLayer(
                "unet",
                "down_blocks.0.resnets.0.conv2",
                {"lora_down.weight": _random(g, 4, 32, 3, 3), "lora_up.weight": _random(g, 32, 4, 1, 1)} | alpha,
            ),
            FormatLayer(
                "unet",
                "down_blocks.1.resnets.0.conv2",
                {
                    "lora_down.weight": _random(g, 4, 64, 1, 1),
                    "lora_mid.weight": _random(g, 4, 4, 3, 3),
                    "lora_up.weight": _random(g, 64, 4, 1, 1),
                }
                | alpha,
            ),
            FormatLayer(
                "unet",
                "down_blocks.1.resnets.0.conv_shortcut",
                {"lora_down.weight": _random(g, 4, 32, 1, 1), "lora_up.weight": _random(g, 64, 4, 1, 1)} | alpha,
            ),
        ]
    )


def dora_file(weights: Mapping[tuple[str, str], torch.Tensor], seed: int = 4) -> FormatFile:
    """DoRA as LyCORIS writes it (`dora_scale`) over LoCon, LoHa and LoKr layers, on the output axis and on the input
    axis (`wd_on_out=False`), magnitudes the base norms perturbed; `weights` are the base weights of those layers."""
    g = torch.Generator().manual_seed(seed)
    to_q = ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    conv = ("unet", "down_blocks.1.resnets.0.conv1")  # [64, 32, 3, 3]
    to_k = ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_k")
    fc2 = ("text_encoder", "encoder.layers.0.mlp.fc2")  # [32, 37]

    def perturbed(norm: torch.Tensor) -> torch.Tensor:
        return (norm * (1 + 0.2 * torch.randn(norm.shape, generator=g))).to(torch.float16)

    def out_norm(key: tuple[str, str]) -> torch.Tensor:
        w = weights[key].double()
        return perturbed(w.flatten(1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1)))

    w = weights[conv].double()
    in_norm = perturbed(w.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, w.shape[1], 1, 1))
    return FormatFile(
        [
            FormatLayer(
                *to_q,
                {"lora_down.weight": _random(g, 4, 64), "lora_up.weight": _random(g, 64, 4), "alpha": torch.tensor(2.0)}
                | {"dora_scale": out_norm(to_q)},
            ),
            FormatLayer(
                *conv,
                {"lora_down.weight": _random(g, 2, 32, 3, 3), "lora_up.weight": _random(g, 64, 2, 1, 1)}
                | {"dora_scale": in_norm},
            ),
            FormatLayer(
                *to_k,
                {"hada_w1_a": _random(g, 64, 2), "hada_w1_b": _random(g, 2, 64)}
                | {"hada_w2_a": _random(g, 64, 2), "hada_w2_b": _random(g, 2, 64), "dora_scale": out_norm(to_k)},
            ),
            FormatLayer(
                *fc2,
                {"lokr_w1": _random(g, 4, 1), "lokr_w2": _random(g, 8, 37, std=0.1), "dora_scale": out_norm(fc2)},
            ),
        ]
    )
