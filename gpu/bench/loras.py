"""Synthetic LoRA files sized like real ones: low-rank weights on every attention projection of the UNet."""

import math

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save as save_safetensors

from gpu.engine.lora.plan import LayerDelta

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _targets(pipeline: StableDiffusionXLPipeline) -> list[tuple[str, torch.nn.Linear]]:
    return [
        (name, module)
        for name, module in pipeline.unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS)
    ]


def rank_for_bytes(pipeline: StableDiffusionXLPipeline, target_bytes: int, bytes_per_value: int = 2) -> int:
    """The rank that makes a LoRA over the attention projections about target_bytes large."""
    per_rank = sum((m.in_features + m.out_features) * bytes_per_value for _, m in _targets(pipeline))
    return max(1, math.floor(target_bytes / per_rank))


def synthetic_deltas(pipeline: StableDiffusionXLPipeline, rank: int, seed: int, dtype: torch.dtype) -> list[LayerDelta]:
    """The same LoRA as `synthetic_lora`, as the deltas a plan of it holds (no file, no diffusers conversion), on
    the UNet's device."""
    generator = torch.Generator().manual_seed(seed)
    deltas = []
    for name, module in _targets(pipeline):
        device = module.weight.device
        if device.type == "meta":
            down = torch.empty(rank, module.in_features, dtype=dtype, device=device)
            up = torch.empty(module.out_features, rank, dtype=dtype, device=device)
        else:
            down = (torch.randn(rank, module.in_features, generator=generator) / math.sqrt(module.in_features)).to(
                dtype
            )
            up = (torch.randn(module.out_features, rank, generator=generator) * 0.05 / math.sqrt(rank)).to(dtype)
        deltas.append(LayerDelta("unet", name, down, up, 1.0))
    return deltas


def synthetic_lora(pipeline: StableDiffusionXLPipeline, rank: int, seed: int, dtype: torch.dtype) -> bytes:
    """safetensors bytes in diffusers' key layout (unet.<module>.lora.down/up.weight)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in _targets(pipeline):
        down = torch.randn(rank, module.in_features, generator=generator) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, rank, generator=generator) * 0.05 / math.sqrt(rank)
        tensors[f"unet.{name}.lora.down.weight"] = down.to(dtype).contiguous()
        tensors[f"unet.{name}.lora.up.weight"] = up.to(dtype).contiguous()
    return save_safetensors(tensors)
