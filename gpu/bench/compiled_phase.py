"""The fast path beside the eager one, on the same engine (`python -m gpu.bench --compile`): first the VAE decoding in
half precision (eager UNet), then the UNet compiled too; timed, recompilations counted over alternating LoRA
requests, peak GPU memory and the compile cache's size recorded."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from contracts.worker import WorkerSuccess
from gpu.bench.compare import swap_ms
from gpu.engine.compile_cache import CacheCounts, CompileCache
from gpu.engine.compiled import compile_unet, uncompile_unet
from gpu.engine.decode import decodes_in_half
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline

Request = Callable[..., WorkerSuccess]
Summary = Callable[[list[float]], dict[str, float]]


def half_vae_phase(engine: SdxlLoraEngine, request: Request, url: str, *, runs: int, summarize: Summary) -> Any:
    """Warm requests with a cached LoRA swap, the VAE decoding in half precision first (WORKER_VAE_HALF=on); the
    decoder is left in that mode for the compiled phase."""
    engine.decoder.half_first = decodes_in_half("on", engine.pipeline.vae)
    if not engine.decoder.half_first:
        return None  # a fp32 model (the tiny one on CPU): nothing to halve
    request(url)
    warm = [request(url).generation_time_seconds for _ in range(runs)]
    return {"warm_cached_lora_seconds": summarize(warm), "fp32_retries": engine.decoder.fp32_retries}


def compiled_phase(
    engine: SdxlLoraEngine,
    request: Request,
    urls: Sequence[str],
    *,
    runs: int,
    alternating: int,
    alternating_steps: int,
    summarize: Summary,
) -> dict[str, Any]:
    """After the eager phases (the weights as found): the first request's time (it compiles), warm requests with a
    cached LoRA swap, and the graphs made over `alternating` requests through the LoRAs, none and scales; then the
    weights' fingerprint. A failure to compile is reported, not raised: the eager figures stand on their own."""
    from torch._dynamo.utils import counters

    pipeline = engine.pipeline
    device = engine.device
    before = fingerprint_pipeline(pipeline)
    torch._dynamo.reset()
    counters.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        compile_unet(pipeline)
        cache_before = CacheCounts.now()
        started = time.perf_counter()
        request(urls[0])
        first_seconds = time.perf_counter() - started
        graphs_after_first = counters["stats"]["unique_graphs"]
        warm = [request(urls[0]) for _ in range(runs)]
        cycle: list[str | None] = [*urls, None]
        for index in range(alternating):
            # The same size as the rest (another size is another graph): few steps, so many swaps fit the budget.
            request(cycle[index % len(cycle)], steps=alternating_steps, scale=0.5 + 0.5 * (index % 2))
        graph_cache = CacheCounts.now().since(cache_before)
        with tempfile.TemporaryDirectory() as folder:
            cache_bytes = CompileCache(Path(folder), device).save()
    except Exception as error:  # an op inductor cannot compile on this machine: say so, keep the eager table
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    finally:
        uncompile_unet(pipeline)
    return {
        "first_request_seconds": round(first_seconds, 2),
        "warm_cached_lora_seconds": summarize([o.generation_time_seconds for o in warm]),
        "cached_swap_ms": summarize([swap_ms(o) for o in warm]),
        "alternating_requests": alternating,
        "recompilations": counters["stats"]["unique_graphs"] - graphs_after_first,
        "fingerprint_identical": fingerprint_pipeline(pipeline) == before,
        # Inductor graphs compiled here, and loaded from its local cache (a machine that ran this before).
        "graphs_compiled": graph_cache.misses,
        "graphs_from_cache": graph_cache.hits,
        "compile_cache_mib": round(cache_bytes / 1024 / 1024, 1),
        "vae_fp32_retries": engine.decoder.fp32_retries,
        "peak_gpu_memory_gib": (
            round(torch.cuda.max_memory_allocated(device) / 1024**3, 2) if device.type == "cuda" else None
        ),
    }
