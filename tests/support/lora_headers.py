"""LoRA files without torch, shaped after a base model's target table: what identity checks is names and shapes."""

from __future__ import annotations

from contracts.lora_targets import load_target_table
from tests.support.safetensors_bytes import safetensors_bytes

SDXL = "sdxl-base-1.0"
# A few attention projections of SDXL's UNet and one of each text encoder.
SDXL_LAYERS = (
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
    ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    ("text_encoder", "encoder.layers.0.self_attn.q_proj"),
    ("text_encoder_2", "encoder.layers.0.self_attn.v_proj"),
)


def lora_tensors(
    base_model: str = SDXL, layers: tuple[tuple[str, str], ...] = SDXL_LAYERS, rank: int = 4
) -> dict[str, tuple[str, list[int]]]:
    """name → (dtype, shape) of a diffusers-layout LoRA over `layers`, with the shapes the table gives them."""
    table = load_target_table(base_model)
    tensors: dict[str, tuple[str, list[int]]] = {}
    for component, path in layers:
        out_features, in_features, *kernel = table.components[component][path]
        tensors[f"{component}.{path}.lora_A.weight"] = ("F16", [rank, in_features, *kernel])
        tensors[f"{component}.{path}.lora_B.weight"] = ("F16", [out_features, rank, *[1 for _ in kernel]])
    return tensors


def lora_file(base_model: str = SDXL, rank: int = 4, metadata: dict[str, str] | None = None) -> bytes:
    """A well-formed LoRA file for `base_model` (pattern-filled data: only the header matters to identity)."""
    return safetensors_bytes(lora_tensors(base_model, rank=rank), metadata=metadata)


def sd15_lora_file() -> bytes:
    """A LoRA for SD1.5: its first down block has attentions (SDXL's has none) and cross-attention is 768 wide."""
    return safetensors_bytes(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": ("F16", [4, 768]),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": ("F16", [320, 4]),
        }
    )


def flux_lora_file() -> bytes:
    """A LoRA for Flux (a transformer, no UNet)."""
    return safetensors_bytes(
        {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": ("BF16", [4, 3072]),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": ("BF16", [3072, 4]),
        }
    )


def loha_file(*, complete: bool = True) -> bytes:
    """A LyCORIS LoHa over an SDXL layer (kohya names); without `complete`, its hada_w2_b is missing."""
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {
        f"{stem}.hada_w1_a": ("F16", [640, 4]),
        f"{stem}.hada_w1_b": ("F16", [4, 640]),
        f"{stem}.hada_w2_a": ("F16", [640, 4]),
        f"{stem}.hada_w2_b": ("F16", [4, 640]),
        f"{stem}.alpha": ("F16", []),
    }
    if not complete:
        del tensors[f"{stem}.hada_w2_b"]
    return safetensors_bytes(tensors)


def ia3_file() -> bytes:
    """A LyCORIS (IA)^3 over an SDXL layer: an adapter kind the worker does not fuse."""
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    return safetensors_bytes({f"{stem}.weight": ("F16", [640]), f"{stem}.on_input": ("F16", [])})


def checkpoint_file() -> bytes:
    """Safetensors that holds model weights, not a LoRA."""
    return safetensors_bytes({"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 4, 3, 3])})
