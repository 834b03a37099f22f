"""The published SDXL base 1.0 architecture, written out as configs, built with random weights (no download)."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpu.tiny.model import SDXL_SCHEDULER_CONFIG
from gpu.tiny.tokenizer import byte_level_vocab, write_tokenizer

SDXL_BASE_NAME = "sdxl-base-1.0-architecture-random-weights"

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that differ from diffusers' defaults).
SDXL_UNET_CONFIG: dict[str, object] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
}

# vae/config.json of SDXL base (the stock VAE, which upcasts to fp32 to decode).
SDXL_VAE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

CLIP_VOCAB = 49408


def clip_l_config() -> CLIPTextConfig:
    """text_encoder: CLIP ViT-L/14's text tower."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def clip_bigg_config() -> CLIPTextConfig:
    """text_encoder_2: OpenCLIP ViT-bigG/14's text tower, with projection."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=1280,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def build_sdxl_random(work_dir: Path, device: torch.device, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    """The full-size SDXL base pipeline with seeded random weights, built directly on `device`."""
    assert len(byte_level_vocab()) <= CLIP_VOCAB
    torch.manual_seed(0)
    with device:
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).to(dtype)
        text_encoder = CLIPTextModel(clip_l_config()).to(dtype)
        text_encoder_2 = CLIPTextModelWithProjection(clip_bigg_config()).to(dtype)
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=write_tokenizer(work_dir / "tokenizer"),
        tokenizer_2=write_tokenizer(work_dir / "tokenizer_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
