"""Write seeded LoRA files for the tiny SDXL (and a foreign SD1.5-shaped one, for rejection tests)."""

from pathlib import Path
from typing import Literal

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from gpu.tiny.model import build_tiny_unet

LoraKind = Literal["sdxl", "sd15"]
ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

# A tiny SD1.5-shaped UNet: attention in the first block and a 32-wide cross-attention, so its LoRA
# names modules the SDXL UNet lacks and has shapes that do not fit it.
_SD15_UNET_CONFIG: dict[str, object] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 1,
}


def lora_state_dict(
    seed: int = 0, rank: int = 4, kind: LoraKind = "sdxl", scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """A LoRA over the attention projections of a tiny UNet, in diffusers' key format."""
    unet = build_tiny_unet(0) if kind == "sdxl" else UNet2DConditionModel(**_SD15_UNET_CONFIG)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=ATTENTION_TARGETS, init_lora_weights=False))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # Random init gives small B matrices; scale them so that different LoRAs change the image visibly.
    return {
        key: (tensor * scale if "lora_B" in key or "lora.up" in key else tensor).contiguous()
        for key, tensor in state.items()
    }


def text_encoder_lora_state_dicts(seed: int, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LoRAs over the attention projections of both tiny text encoders, in diffusers' key format."""
    from gpu.tiny.model import build_tiny_text_encoders

    layers = []
    for offset, encoder in enumerate(build_tiny_text_encoders()):
        torch.manual_seed(seed * 2 + offset)
        encoder.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_ATTENTION_TARGETS, init_lora_weights=False)
        )
        layers.append(convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder)))
    return layers[0], layers[1]


def write_lora(
    out_file: Path,
    seed: int = 0,
    rank: int = 4,
    kind: LoraKind = "sdxl",
    scale: float = 1.0,
    text_encoders: bool = False,
) -> Path:
    """Write a LoRA as .safetensors in the layout diffusers' save_lora_weights produces."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(seed=seed, rank=rank, kind=kind, scale=scale)
    te1, te2 = text_encoder_lora_state_dicts(seed, rank) if text_encoders else (None, None)
    StableDiffusionXLPipeline.save_lora_weights(
        str(out_file.parent),
        unet_lora_layers=state,
        text_encoder_lora_layers=te1,
        text_encoder_2_lora_layers=te2,
        weight_name=out_file.name,
        safe_serialization=True,
    )
    return out_file
