"""Latents to an image: the VAE decodes in its own half precision, and again in fp32 only if that overflowed.

diffusers upcasts the whole VAE to fp32 for every image when its config says `force_upcast` (SDXL's original VAE
overflows in fp16), then casts it back: a fp32 decode plus two casts of 83M weights per request. The fp16-fix VAE
the deployment ships (gpu/modal/weights.py) does not overflow, and a half decode is several times faster; but a
VAE can still overflow on some latents, and an overflow is a black or NaN image, not an error. So the half decode
is checked, and an image with NaN/Inf is decoded again in fp32.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from PIL.Image import Image

log = logging.getLogger("gpu.engine.decode")

HalfVaeChoice = Literal["auto", "on", "off"]
HALF_DTYPES = (torch.float16, torch.bfloat16)


def decodes_in_half(choice: HalfVaeChoice, vae: Any) -> bool:
    """Whether to decode in the VAE's half precision first: `auto` when its config does not ask for the upcast,
    `on` always (the guard catches an overflow), `off` never. A fp32 VAE has nothing to choose."""
    if vae.dtype not in HALF_DTYPES:
        return False
    return choice == "on" or (choice == "auto" and not getattr(vae.config, "force_upcast", False))


class VaeDecoder:
    """Decodes a pipeline's latents as its own `output_type="pil"` path does, with the half-first policy."""

    def __init__(self, pipeline: Any, half_first: bool) -> None:
        self.pipeline = pipeline
        self.half_first = half_first
        # Images whose half decode overflowed and were decoded again in fp32 (the benchmark and tests read it).
        self.fp32_retries = 0

    @torch.inference_mode()
    def to_image(self, latents: torch.Tensor) -> Image:
        """The first image of the batch of latents, as PIL."""
        vae = self.pipeline.vae
        if self.half_first:
            image = self._decode(self._denormalized(latents.to(vae.dtype)))
            if bool(torch.isfinite(image).all()):
                return self._postprocess(image)
            self.fp32_retries += 1
            log.warning("the VAE overflowed in %s: decoding this image again in float32", vae.dtype)
        return self._postprocess(self._decode_fp32(self._denormalized(latents.float())))

    def _denormalized(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipeline.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            denormalized: torch.Tensor = latents * std_t / config.scaling_factor + mean_t
            return denormalized
        scaled: torch.Tensor = latents / config.scaling_factor
        return scaled

    def _decode_fp32(self, latents: torch.Tensor) -> torch.Tensor:
        """diffusers' way: the VAE in fp32 for this decode, then back (fp16/bf16 → fp32 → back is exact)."""
        vae = self.pipeline.vae
        dtype = vae.dtype
        if dtype == torch.float32:
            return self._decode(latents)
        vae.to(dtype=torch.float32)
        try:
            return self._decode(latents)
        finally:
            vae.to(dtype=dtype)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.pipeline.vae.decode(latents, return_dict=False)[0]
        return image

    def _postprocess(self, image: torch.Tensor) -> Image:
        watermark = getattr(self.pipeline, "watermark", None)
        if watermark is not None:
            image = watermark.apply_watermark(image)
        images: list[Image] = self.pipeline.image_processor.postprocess(image, output_type="pil")
        return images[0]
