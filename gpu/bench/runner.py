"""Run the benchmark phases against a real engine and collect the numbers."""

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from contracts.worker import WorkerRequest, WorkerSuccess
from gpu.bench.compare import diffusers_adapter_swap_ms, fuse_unfuse_residue, swap_ms, synchronize
from gpu.bench.compiled_phase import compiled_phase, half_vae_phase
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.engine.lora.cache import DiskLoraCache, MemoryLoraCache
from gpu.engine.lora.download import DownloadPolicy, url_identity
from gpu.engine.lora.plan import LoraPlan
from gpu.engine.lora.store import LoraStore

MiB = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and at what size."""

    tiny: bool
    width: int
    height: int
    steps: int
    cfg: float
    runs: int
    lora_target_bytes: int
    contamination_requests: int
    contamination_size: int
    contamination_steps: int


FULL = BenchConfig(False, 1024, 1024, 28, 5.5, 5, 50 * MiB, 100, 512, 2)
TINY = BenchConfig(True, 64, 64, 4, 5.5, 5, 256 * 1024, 30, 64, 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3), "n": len(values)}


def _ok(outcome: object) -> WorkerSuccess:
    if not isinstance(outcome, WorkerSuccess):
        raise RuntimeError(f"benchmark request failed: {outcome}")
    return outcome


def run_benchmark(
    config: BenchConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    compiled: bool = False,
    on_eager_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the model, make three LoRAs, and run every phase (with `compiled`, the fast path's phases last, after
    `on_eager_done` got the eager results: a run cut short while compiling still leaves them); returns a
    JSON-ready dict."""
    from gpu.bench.loras import rank_for_bytes, synthetic_lora

    work = Path(tempfile.mkdtemp(prefix="vb-bench-"))
    started = time.perf_counter()
    if config.tiny:
        from gpu.tiny.model import TINY_BASE_MODEL, build_tiny_pipeline

        pipeline = build_tiny_pipeline(work).to(device=device, dtype=dtype)
        pipeline.set_progress_bar_config(disable=True)
        base_model = TINY_BASE_MODEL
    else:
        from gpu.tiny.sdxl_config import SDXL_BASE_NAME, build_sdxl_random

        pipeline = build_sdxl_random(work, device, dtype)
        base_model = SDXL_BASE_NAME
    synchronize(device)
    build_seconds = time.perf_counter() - started

    lora_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    rank = rank_for_bytes(pipeline, config.lora_target_bytes, torch.finfo(lora_dtype).bits // 8)
    disk = DiskLoraCache(work / "lora-cache", budget_bytes=4 * 1024 * MiB)
    urls = []
    lora_bytes = 0
    for index in range(3):
        # Never contacted: the files sit in the disk cache, as on a warm Modal Volume.
        url = f"http://127.0.0.1:9/bench/lora-{index}.safetensors"
        data = synthetic_lora(pipeline, rank, seed=index, dtype=lora_dtype)
        disk.put(url_identity(url), data)
        lora_bytes = len(data)
        urls.append(url)
    store = LoraStore(DownloadPolicy(mode="local"), MemoryLoraCache[LoraPlan](8 * 1024 * MiB), disk)
    engine = SdxlLoraEngine(pipeline, store, base_model=base_model, default_timeout_seconds=3600)

    def request(lora: str | None, small: bool = False, steps: int | None = None, scale: float = 0.9) -> WorkerSuccess:
        size = config.contamination_size if small else config.width
        outcome = engine.generate(
            WorkerRequest(
                prompt="a portrait photo of sks person, studio light",
                negative_prompt="blurry",
                lora_url=lora,
                lora_scale=scale,
                width=size,
                height=size if small else config.height,
                steps=steps or config.steps,
                cfg=config.cfg,
                seed=1234,
            )
        )
        synchronize(device)
        return _ok(outcome)

    fingerprint_before = fingerprint_pipeline(pipeline)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Uncached swap: the LoRA is on local disk only (memory cache emptied before each request).
    uncached = []
    for _ in range(config.runs):
        store.memory = MemoryLoraCache[LoraPlan](8 * 1024 * MiB)
        outcome = request(urls[1], small=True, steps=1)
        assert outcome.timings is not None and outcome.timings.lora_source == "disk_cache"
        uncached.append(swap_ms(outcome))

    request(None)  # warm-up at full size
    request(urls[0])  # puts LoRA 0 in the memory cache
    base = [request(None).generation_time_seconds for _ in range(config.runs)]
    with_lora = [request(urls[0]) for _ in range(config.runs)]

    # Contamination: many alternating requests, then the fingerprint and the first image again.
    first_image = request(urls[0], small=True, steps=config.contamination_steps).image_base64
    contamination_started = time.perf_counter()
    for index in range(config.contamination_requests):
        request(urls[index % 3], small=True, steps=config.contamination_steps)
    contamination_seconds = time.perf_counter() - contamination_started
    last_image = request(urls[0], small=True, steps=config.contamination_steps).image_base64
    fingerprint_after = fingerprint_pipeline(pipeline)

    # The replaced strategies, on the same model, after our own phases (they leave the weights as found).
    lora_file = disk.get(url_identity(urls[0]))
    assert lora_file is not None
    adapter_swaps = diffusers_adapter_swap_ms(pipeline, lora_file, config.runs)
    residue = fuse_unfuse_residue(pipeline, lora_file)
    restored_after_comparison = fingerprint_pipeline(pipeline) == fingerprint_before
    results = {
        "config": asdict(config),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "versions": _versions(),
        "base_model": base_model,
        "build_seconds": round(build_seconds, 2),
        "lora": {"rank": rank, "bytes": lora_bytes, "count": 3},
        "warm_no_lora_seconds": summary(base),
        "warm_cached_lora_seconds": summary([o.generation_time_seconds for o in with_lora]),
        "cached_swap_ms": summary([swap_ms(o) for o in with_lora]),
        "uncached_swap_from_disk_ms": summary(uncached),
        "contamination": {
            "requests": config.contamination_requests,
            "seconds": round(contamination_seconds, 2),
            "fingerprint_identical": fingerprint_before == fingerprint_after,
            "first_image_repeats_exactly": first_image == last_image,
        },
        "replaced_strategies": {
            "diffusers_adapter_swap_ms": summary(adapter_swaps),
            "fuse_unfuse_residue": residue,
            "weights_restored_after_comparison": restored_after_comparison,
        },
        "half_vae": None,
        "compiled": None,
        "pristine_copy_gib": round(engine.fuser.pristine_bytes / 1024**3, 3),
        "peak_gpu_memory_gib": (
            round(torch.cuda.max_memory_allocated(device) / 1024**3, 2) if device.type == "cuda" else None
        ),
    }
    if not compiled:
        return results
    if on_eager_done is not None:
        on_eager_done(results)
    results["half_vae"] = half_vae_phase(engine, request, urls[0], runs=config.runs, summarize=summary)
    results["compiled"] = compiled_phase(
        engine,
        request,
        urls,
        runs=config.runs,
        alternating=config.contamination_requests,
        alternating_steps=config.contamination_steps,
        summarize=summary,
    )
    return results


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": str(torch.version.cuda),
    }
