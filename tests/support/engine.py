"""Helpers to build a real engine over the tiny model and to decode its answers."""

import base64
import io
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from contracts.worker import WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.engine import SdxlLoraEngine
from gpu.serve.bootstrap import build_engine
from gpu.serve.settings import WorkerSettings


def tiny_engine(model_dir: Path, cache_dir: Path | None = None, **overrides: object) -> SdxlLoraEngine:
    settings = WorkerSettings(
        MODEL_DIR=model_dir,
        WORKER_MODE="local",
        WORKER_DEVICE="cpu",
        LORA_CACHE_DIR=cache_dir,
        **overrides,  # type: ignore[arg-type]
    )
    return build_engine(settings)


def request(**fields: object) -> WorkerRequest:
    """A small, fast request: 64×64, 3 steps."""
    base: dict[str, object] = {"prompt": "a portrait of sks person", "width": 64, "height": 64, "steps": 3, "seed": 7}
    base.update(fields)
    return WorkerRequest.model_validate(base)


def png_of(outcome: WorkerSuccess | WorkerError) -> bytes:
    assert isinstance(outcome, WorkerSuccess), f"expected success, got {outcome}"
    return base64.b64decode(outcome.image_base64)


def image_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return image.size


def error_of(outcome: WorkerSuccess | WorkerError) -> WorkerError:
    assert isinstance(outcome, WorkerError), "expected an error, got an image"
    return outcome


def render_pixels(pipeline: StableDiffusionXLPipeline, steps: int) -> np.ndarray:
    """The tiny pipeline's image for one fixed prompt and seed, as pixels: the same weights give the same array."""
    result = pipeline(
        prompt="a portrait of sks person",
        width=64,
        height=64,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(11),
        output_type="np",
    )
    return np.asarray(result.images[0])


def weight_of(pipeline: StableDiffusionXLPipeline, component: str, path: str) -> torch.Tensor:
    """A layer's weight by its module path; a CLIP text encoder's may sit under `text_model.` (transformers 5 drops
    that level from `CLIPTextModel`, not from `CLIPTextModelWithProjection`)."""
    encoder = getattr(pipeline, component)
    try:
        weight: torch.Tensor = encoder.get_submodule(path).weight
    except AttributeError:
        weight = encoder.get_submodule(f"text_model.{path}").weight
    return weight
