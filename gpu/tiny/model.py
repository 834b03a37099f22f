"""Build a tiny SDXL pipeline from configs with seeded random weights: no download, about 11 MB."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpu.tiny.tokenizer import BOS, EOS, byte_level_vocab, write_tokenizer

TINY_BASE_MODEL = "tiny-sdxl-random"
TEXT_HIDDEN = 32
TIME_EMBED = 8

# The UNet of SDXL at toy width: the same block types, text-time conditioning and linear projections.
TINY_UNET_CONFIG: dict[str, object] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED,
    "transformer_layers_per_block": (1, 2),
    # 6 micro-conditioning numbers × TIME_EMBED + the pooled embedding of text encoder 2.
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED + TEXT_HIDDEN,
    # The two text encoders' hidden states are concatenated.
    "cross_attention_dim": 2 * TEXT_HIDDEN,
    "norm_num_groups": 1,
}

TINY_VAE_CONFIG: dict[str, object] = {
    "block_out_channels": (32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": 128,
}

# The scheduler configuration of SDXL base.
SDXL_SCHEDULER_CONFIG: dict[str, object] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def _text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=vocab_size,
        hidden_act="gelu",
        projection_dim=TEXT_HIDDEN,
        max_position_embeddings=77,
    )


def build_tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """The tiny SDXL UNet with seeded random weights."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG)


def build_tiny_text_encoders(seed: int = 0) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """The two tiny CLIP text encoders with seeded random weights."""
    vocab_size = len(byte_level_vocab())
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(vocab_size))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab_size))
    return text_encoder, text_encoder_2


def build_tiny_pipeline(work_dir: Path, seed: int = 0) -> StableDiffusionXLPipeline:
    """Assemble a tiny SDXL pipeline in memory; its tokenizer files are written under work_dir."""
    unet = build_tiny_unet(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    text_encoder, text_encoder_2 = build_tiny_text_encoders(seed)
    tokenizer = write_tokenizer(work_dir / "tokenizer")
    tokenizer_2 = write_tokenizer(work_dir / "tokenizer_2")
    assert tokenizer.bos_token == BOS and tokenizer.eos_token == EOS
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    )


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny SDXL and save it with save_pretrained (safetensors) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_tiny_pipeline(out_dir, seed)
    pipeline.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / "BASE_MODEL").write_text(TINY_BASE_MODEL + "\n", encoding="utf-8")
    return out_dir


def ensure_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model into out_dir unless a complete one is already there."""
    if (out_dir / "model_index.json").is_file() and (out_dir / "BASE_MODEL").is_file():
        return out_dir
    # Build beside the target and rename, so a crash never leaves a half-written model that looks complete.
    staging = out_dir.with_name(out_dir.name + ".partial")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    save_tiny_model(staging, seed)
    staging.rename(out_dir)
    return out_dir
