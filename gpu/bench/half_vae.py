"""The VAE decoding in half precision (eager UNet), beside the eager table: warm requests with a cached LoRA swap,
and the images that overflowed and were decoded again in fp32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts.worker import WorkerSuccess
from gpu.engine.decode import decodes_in_half
from gpu.engine.engine import SdxlLoraEngine

Request = Callable[..., WorkerSuccess]
Summary = Callable[[list[float]], dict[str, float]]


def half_vae_phase(engine: SdxlLoraEngine, request: Request, url: str, *, runs: int, summarize: Summary) -> Any:
    """Warm requests with a cached LoRA swap, the VAE decoding in half precision first (WORKER_VAE_HALF=on); the
    decoder is left in that mode for the compile modes after it."""
    engine.decoder.half_first = decodes_in_half("on", engine.pipeline.vae)
    if not engine.decoder.half_first:
        return None  # a fp32 model (the tiny one on CPU): nothing to halve
    request(url)
    warm = [request(url).generation_time_seconds for _ in range(runs)]
    return {"warm_cached_lora_seconds": summarize(warm), "fp32_retries": engine.decoder.fp32_retries}
