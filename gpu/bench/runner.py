"""Run the benchmark's phases against a real engine, recording the results after each one.

Phases, in the order they run (the most valuable figures first, so a run cut short by a device's time limit keeps
them): the uncached swap from disk, warm requests without and with a cached LoRA, the swap alone (fuse and restore
apart, with host times, beside the replaced fuser), the GPU allocation after swaps, the alternating requests and
their weights check, the two replaced LoRA strategies, the half-precision VAE, then each compile mode asked for.
`on_phase` gets the results after every phase (the CLI writes JSON and docs there). The base weights are checked
against one snapshot (gpu/bench/snapshot.py) after each phase that changes them, not fingerprinted each time.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from contracts.worker import WorkerRequest, WorkerSuccess
from gpu.bench.compare import diffusers_adapter_swap_ms, fuse_unfuse_residue, swap_ms, synchronize
from gpu.bench.compile_modes import CompileMode, compile_mode_phase
from gpu.bench.half_vae import half_vae_phase
from gpu.bench.memory import device_allocated_bytes
from gpu.bench.snapshot import WeightSnapshot
from gpu.bench.swap_phase import swap_phase, variants
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.lora.cache import DiskLoraCache, MemoryLoraCache
from gpu.engine.lora.download import DownloadPolicy, url_identity
from gpu.engine.lora.groups import group_update_bytes
from gpu.engine.lora.parse import parse_lora
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
# Alternating requests when the full count was measured before (`skip_measured`): enough to see a swap go wrong.
SHORT_ALTERNATION = 20


@dataclass(frozen=True)
class BenchOptions:
    """Which phases, and how much of each."""

    # Skip what earlier runs measured and this code did not change: the two replaced LoRA strategies, and the
    # alternation at its full count (SHORT_ALTERNATION requests instead).
    skip_measured: bool = False
    compile_modes: tuple[CompileMode, ...] = ()
    inductor_recipe: bool = True
    # After each compile mode, compile it again from inductor's local cache and time that first request too.
    from_cache: bool = True
    swap_variants: tuple[str, ...] = ("before", "direct", "staged")
    swap_runs: int = 20
    # Swaps between the two readings of the GPU's allocated bytes (`swap_memory`).
    memory_swaps: int = 100
    # Seconds the whole run may take; a compile mode is not started with less than `compile_min_seconds` left.
    budget_seconds: float | None = None
    compile_min_seconds: float = 150.0
    alternating: int | None = None


@dataclass
class Clock:
    """The run's budget: what is left of it."""

    budget_seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        if self.budget_seconds is None:
            return float("inf")
        return self.budget_seconds - (time.perf_counter() - self.started)


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


@dataclass
class Bench:
    """The engine under test, its LoRAs, the weights' snapshot, and the results so far."""

    config: BenchConfig
    options: BenchOptions
    engine: SdxlLoraEngine
    urls: list[str]
    disk: DiskLoraCache
    snapshot: WeightSnapshot
    results: dict[str, Any]
    on_phase: Callable[[dict[str, Any]], None]
    clock: Clock

    def request(
        self, lora: str | None, small: bool = False, steps: int | None = None, scale: float = 0.9
    ) -> WorkerSuccess:
        config = self.config
        size = config.contamination_size if small else config.width
        outcome = self.engine.generate(
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
        synchronize(self.engine.device)
        return _ok(outcome)

    def phase(self, name: str, run: Callable[[], Any], *, needs_seconds: float = 0.0, skip: str | None = None) -> None:
        """Run one phase into results[name] (or record why not), time it, and hand the results on."""
        if skip is None and self.clock.left() < needs_seconds:
            skip = f"budget: {self.clock.left():.0f} s left, {needs_seconds:.0f} s needed"
        if skip is not None:
            self.results["skipped"][name] = skip
        else:
            started = time.perf_counter()
            self.results[name] = run()
            self.results["phase_seconds"][name] = round(time.perf_counter() - started, 1)
        self.on_phase(self.results)

    def plans(self) -> list[LoraPlan]:
        """The three LoRAs as the engine plans them (from the disk cache's bytes)."""
        plans = []
        for url in self.urls:
            data = self.disk.get(url_identity(url))
            assert data is not None
            plans.append(self.engine.plan_lora(parse_lora(data)))
        return plans


def run_benchmark(
    config: BenchConfig,
    device: torch.device,
    dtype: torch.dtype,
    options: BenchOptions | None = None,
    on_phase: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the model, make three LoRAs, and run every phase asked for; returns a JSON-ready dict (also handed to
    `on_phase` after each phase)."""
    options = options or BenchOptions()
    bench = _setup(config, device, dtype, options, on_phase or (lambda _: None))
    bench.on_phase(bench.results)  # the build and the LoRAs are on record before the first phase
    engine, urls = bench.engine, bench.urls
    runs = config.runs
    alternating = options.alternating or (
        min(SHORT_ALTERNATION, config.contamination_requests)
        if options.skip_measured
        else config.contamination_requests
    )
    bench.phase("uncached_swap_from_disk_ms", lambda: _uncached(bench))
    bench.phase("warm", lambda: _warm(bench))
    bench.phase("swap", lambda: swap_phase(engine.pipeline, bench.plans(), device, options.swap_runs, _variants(bench)))
    bench.phase("swap_memory", lambda: _swap_memory(bench), skip=None if device.type == "cuda" else "not a GPU")
    bench.phase("contamination", lambda: _contamination(bench, alternating))
    bench.phase(
        "replaced_strategies",
        lambda: _replaced(bench),
        skip="measured before (--skip-measured)" if options.skip_measured else None,
    )
    bench.phase(
        "half_vae",
        lambda: half_vae_phase(engine, bench.request, urls[0], runs=runs, summarize=summary),
        skip=None if options.compile_modes else "only with a compile mode",
    )
    for mode in options.compile_modes:
        bench.phase(
            f"compile:{mode.name}",
            partial(_compiled, bench, mode, alternating),
            needs_seconds=options.compile_min_seconds,
        )
    bench.results["weights_bit_identical_at_end"] = bench.snapshot.identical()
    bench.results["total_seconds"] = round(time.perf_counter() - bench.clock.started, 1)
    bench.on_phase(bench.results)
    return bench.results


def _setup(
    config: BenchConfig,
    device: torch.device,
    dtype: torch.dtype,
    options: BenchOptions,
    on_phase: Callable[[dict[str, Any]], None],
) -> Bench:
    from gpu.bench.loras import rank_for_bytes, synthetic_lora

    clock = Clock(options.budget_seconds)
    work = Path(tempfile.mkdtemp(prefix="vb-bench-"))
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
    build_seconds = time.perf_counter() - clock.started

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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    snapshot = WeightSnapshot(pipeline)
    results: dict[str, Any] = {
        "config": asdict(config),
        "options": {**asdict(options), "compile_modes": [mode.name for mode in options.compile_modes]},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "versions": _versions(),
        "base_model": base_model,
        "build_seconds": round(build_seconds, 2),
        "lora": {"rank": rank, "bytes": lora_bytes, "count": 3},
        "weights_snapshot": {"gib": round(snapshot.nbytes / 1024**3, 2), "kept_on": snapshot.location},
        "phase_seconds": {},
        "skipped": {},
        "compile_modes": {},
        "half_vae": None,
    }
    return Bench(config, options, engine, urls, disk, snapshot, results, on_phase, clock)


def _uncached(bench: Bench) -> dict[str, float]:
    """The LoRA on local disk only (the memory cache emptied before each request)."""
    times = []
    for _ in range(bench.config.runs):
        bench.engine.store.memory = MemoryLoraCache[LoraPlan](8 * 1024 * MiB)
        outcome = bench.request(bench.urls[1], small=True, steps=1)
        assert outcome.timings is not None and outcome.timings.lora_source == "disk_cache"
        times.append(swap_ms(outcome))
    return summary(times)


def _warm(bench: Bench) -> dict[str, Any]:
    """Warm requests at full size without a LoRA, then with a cached one; the eager peak GPU memory."""
    bench.request(None)  # warm-up at full size
    bench.request(bench.urls[0])  # puts LoRA 0 in the memory cache
    base = [bench.request(None).generation_time_seconds for _ in range(bench.config.runs)]
    with_lora = [bench.request(bench.urls[0]) for _ in range(bench.config.runs)]
    device = bench.engine.device
    # Kept at the top level too: the report's table reads them there.
    bench.results["warm_no_lora_seconds"] = summary(base)
    bench.results["warm_cached_lora_seconds"] = summary([o.generation_time_seconds for o in with_lora])
    bench.results["cached_swap_ms"] = summary([swap_ms(o) for o in with_lora])
    bench.results["pristine_copy_gib"] = round(bench.engine.fuser.pristine_bytes / 1024**3, 3)
    bench.results["peak_gpu_memory_gib"] = (
        round(torch.cuda.max_memory_allocated(device) / 1024**3, 2) if device.type == "cuda" else None
    )
    return {"requests": 2 * bench.config.runs + 2}


def _variants(bench: Bench) -> list[Any]:
    device = bench.engine.device
    return variants(bench.options.swap_variants, device, group_update_bytes(device))


def _swap_memory(bench: Bench) -> dict[str, Any]:
    """The GPU's allocated bytes before and after `memory_swaps` fuse-and-restore cycles of the engine's own fuser
    over the three LoRAs (each fused once before: pristine copies and resolutions exist): equal if nothing is left."""
    fuser, device, ready = bench.engine.fuser, bench.engine.device, bench.plans()
    for plan in ready:
        fuser.fuse(plan, 0.9)
        fuser.restore()
    before = device_allocated_bytes(device)
    for index in range(bench.options.memory_swaps):
        fuser.fuse(ready[index % len(ready)], 0.5 + 0.25 * (index % 3))
        fuser.restore()
    after = device_allocated_bytes(device)
    assert before is not None and after is not None
    return {"swaps": bench.options.memory_swaps, "allocated_before": before, "allocated_after": after}


def _contamination(bench: Bench, requests: int) -> dict[str, Any]:
    """Many alternating requests, then the weights against the snapshot and the first image again."""
    config = bench.config
    first = bench.request(bench.urls[0], small=True, steps=config.contamination_steps).image_base64
    started = time.perf_counter()
    for index in range(requests):
        bench.request(bench.urls[index % 3], small=True, steps=config.contamination_steps)
    seconds = time.perf_counter() - started
    last = bench.request(bench.urls[0], small=True, steps=config.contamination_steps).image_base64
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "fingerprint_identical": bench.snapshot.identical(),
        "first_image_repeats_exactly": first == last,
    }


def _replaced(bench: Bench) -> dict[str, Any]:
    """The replaced strategies, on the same model, after our own phases (they leave the weights as found)."""
    lora_file = bench.disk.get(url_identity(bench.urls[0]))
    assert lora_file is not None
    pipeline = bench.engine.pipeline
    adapter_swaps = diffusers_adapter_swap_ms(pipeline, lora_file, bench.config.runs)
    residue = fuse_unfuse_residue(pipeline, lora_file)
    return {
        "diffusers_adapter_swap_ms": summary(adapter_swaps),
        "fuse_unfuse_residue": residue,
        "weights_restored_after_comparison": bench.snapshot.identical(),
    }


def _compiled(bench: Bench, mode: CompileMode, alternating: int) -> dict[str, Any]:
    result = compile_mode_phase(
        bench.engine,
        bench.request,
        bench.urls,
        mode,
        runs=bench.config.runs,
        alternating=alternating,
        alternating_steps=bench.config.contamination_steps,
        summarize=summary,
        snapshot=bench.snapshot,
        recipe=bench.options.inductor_recipe,
        from_cache=bench.options.from_cache,
    )
    bench.results["compile_modes"][mode.name] = result
    return {"mode": mode.name, "error": result.get("error")}


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
