"""The engine's own VAE decode: the same pixels as diffusers' `output_type="pil"` path, half precision first where the
policy allows, and an overflowing half decode decoded again in fp32 instead of coming back as a black image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from gpu.engine.decode import VaeDecoder, decodes_in_half
from tests.support.engine import png_of, request, tiny_engine

PROMPT = {"prompt": "a portrait of sks person", "width": 64, "height": 64, "num_inference_steps": 3}


def load(model_dir: Path, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    pipeline = StableDiffusionXLPipeline.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipeline: StableDiffusionXLPipeline, output_type: str) -> Any:
    generator = torch.Generator().manual_seed(11)
    return pipeline(**PROMPT, generator=generator, output_type=output_type).images


@contextmanager
def half_decode_overflows(pipeline: StableDiffusionXLPipeline) -> Iterator[list[torch.dtype]]:
    """Fault injection: the VAE decoder's output is Inf whenever it runs in half precision (what SDXL's original
    VAE does in fp16 on some latents; the tiny random VAE cannot be made to overflow on demand)."""
    seen: list[torch.dtype] = []

    def overflow(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        seen.append(output.dtype)
        return torch.full_like(output, float("inf")) if output.dtype in (torch.float16, torch.bfloat16) else output

    handle = pipeline.vae.decoder.register_forward_hook(overflow)
    try:
        yield seen
    finally:
        handle.remove()


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_the_fp32_path_gives_diffusers_own_pixels(tiny_model_dir: Path, dtype: torch.dtype) -> None:
    """With the half-first policy off, the engine decodes exactly as diffusers does (fp16: its fp32 upcast)."""
    pipeline = load(tiny_model_dir, dtype)
    reference = run(pipeline, "pil")[0]
    decoded = VaeDecoder(pipeline, half_first=False).to_image(run(pipeline, "latent"))
    assert np.array_equal(pixels(decoded), pixels(reference))
    assert pipeline.vae.dtype == dtype


def test_the_half_decode_is_within_two_levels_of_the_fp32_one(tiny_model_dir: Path) -> None:
    pipeline = load(tiny_model_dir, torch.float16)
    latents = run(pipeline, "latent")
    half = VaeDecoder(pipeline, half_first=True)
    half_pixels = pixels(half.to_image(latents))
    fp32_pixels = pixels(VaeDecoder(pipeline, half_first=False).to_image(latents))
    assert half.fp32_retries == 0
    assert np.abs(half_pixels - fp32_pixels).max() <= 2  # of 255: fp16 rounding, nothing more


def test_an_overflowing_half_decode_is_decoded_again_in_fp32(tiny_model_dir: Path) -> None:
    pipeline = load(tiny_model_dir, torch.float16)
    latents = run(pipeline, "latent")
    expected = pixels(VaeDecoder(pipeline, half_first=False).to_image(latents))
    decoder = VaeDecoder(pipeline, half_first=True)
    with half_decode_overflows(pipeline) as seen:
        image = decoder.to_image(latents)
    assert seen == [torch.float16, torch.float32]
    assert decoder.fp32_retries == 1
    assert np.array_equal(pixels(image), expected)
    assert pipeline.vae.dtype == torch.float16  # back in half precision for the next request


def test_the_engine_serves_an_image_through_the_guard(tiny_model_dir: Path) -> None:
    """WORKER_VAE_HALF=on with a fp16 tiny model on CPU: the overflow is caught inside a real request."""
    engine = tiny_engine(tiny_model_dir, WORKER_DTYPE="float16", WORKER_VAE_HALF="on")
    assert engine.decoder.half_first
    with half_decode_overflows(engine.pipeline):
        png = png_of(engine.generate(request()))
    assert engine.decoder.fp32_retries == 1
    assert len(png) > 100


@pytest.mark.parametrize(
    ("choice", "dtype", "force_upcast", "expected"),
    [
        ("auto", torch.float16, False, True),  # the fp16-fix VAE
        ("auto", torch.float16, True, False),  # SDXL's original VAE
        ("on", torch.float16, True, True),
        ("off", torch.float16, False, False),
        ("auto", torch.bfloat16, False, True),
        ("on", torch.float32, False, False),  # nothing to choose in fp32
    ],
)
def test_when_the_half_decode_is_tried_first(
    choice: str, dtype: torch.dtype, force_upcast: bool, expected: bool
) -> None:
    vae = SimpleNamespace(dtype=dtype, config=SimpleNamespace(force_upcast=force_upcast))
    assert decodes_in_half(choice, vae) is expected  # type: ignore[arg-type]
