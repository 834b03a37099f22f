"""torch.compile modes compared on the same engine in one run: each mode's first request (it compiles), its warm
requests with a cached LoRA swap, the recompilations over alternating LoRA requests, and its start from inductor's
local cache (what a container that loaded the saved cache pays).

A mode is `default`, `reduce-overhead` (CUDA graphs) or `max-autotune-no-cudagraphs`, and `+vae` compiles the VAE
decoder too. With the recipe on, inductor runs with the settings of diffusers' "Accelerate inference of text-to-image
diffusion models" tutorial (below); its `fuse_qkv_projections` is not used, since it moves the attention projections
a LoRA targets into one fused layer the fuser does not address. Inductor's `freezing` stays off whatever the recipe
says: it would fold the weights into the compiled code as constants, and every in-place LoRA swap after that would
be silently ignored.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpu.bench.compare import swap_ms
from gpu.bench.snapshot import WeightSnapshot
from gpu.engine.compile_cache import CacheCounts, CompileCache
from gpu.engine.compiled import compile_unet, uncompile_unet
from gpu.engine.engine import SdxlLoraEngine

Request = Callable[..., Any]
Summary = Callable[[list[float]], dict[str, float]]

# diffusers' fast-diffusion tutorial (docs/source/en/tutorials/fast_diffusion.md, "Use faster kernels with
# torch.compile"): the inductor flags it sets before compiling the UNet and the VAE decoder.
FAST_RECIPE: dict[str, bool] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "epilogue_fusion": False,
    "coordinate_descent_check_all_directions": True,
}
MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
# The order a run takes them in when asked for all: the deployment's candidate first, the slowest to compile last.
DEFAULT_ORDER = ("default", "reduce-overhead", "default+vae", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileMode:
    """One way to compile: torch.compile's mode for the UNet (None: default), and whether the VAE decoder too."""

    name: str
    mode: str | None
    vae: bool


def parse_modes(text: str) -> tuple[CompileMode, ...]:
    """`default,reduce-overhead+vae,…` in the order given; an unknown mode is an error, not a skip."""
    modes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        base, _, suffix = item.partition("+")
        if base not in MODES or suffix not in ("", "vae"):
            raise ValueError(f"unknown compile mode {item!r}: one of {', '.join(MODES)}, each optionally +vae")
        modes.append(CompileMode(item, None if base == "default" else base, suffix == "vae"))
    return tuple(modes)


@contextmanager
def inductor_settings(recipe: bool) -> Iterator[dict[str, Any]]:
    """The recipe's flags set (when asked) and `freezing` held off, for the `with` block; the settings in force are
    yielded for the report, and everything is put back after."""
    from torch._inductor import config

    wanted: dict[str, Any] = {**(FAST_RECIPE if recipe else {}), "freezing": False}
    previous = {name: getattr(config, name) for name in wanted}
    for name, value in wanted.items():
        setattr(config, name, value)
    try:
        yield {name: getattr(config, name) for name in wanted}
    finally:
        for name, value in previous.items():
            setattr(config, name, value)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compile(engine: SdxlLoraEngine, mode: CompileMode) -> None:
    pipeline = engine.pipeline
    compile_unet(pipeline, mode=mode.mode)
    if mode.vae:
        if engine.device.type == "cuda":
            pipeline.vae.to(memory_format=torch.channels_last)
        pipeline.vae.decoder.compile(mode=mode.mode, dynamic=False)


def _uncompile(engine: SdxlLoraEngine) -> None:
    uncompile_unet(engine.pipeline)
    engine.pipeline.vae.decoder._compiled_call_impl = None


def compile_mode_phase(
    engine: SdxlLoraEngine,
    request: Request,
    urls: Sequence[str],
    mode: CompileMode,
    *,
    runs: int,
    alternating: int,
    alternating_steps: int,
    summarize: Summary,
    snapshot: WeightSnapshot,
    recipe: bool,
    from_cache: bool,
) -> dict[str, Any]:
    """Compile in this mode, time it, count what recompiles, check the weights; the engine is left eager. A failure
    is reported, not raised: the figures of the other modes stand on their own."""
    device = engine.device
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict[str, Any] = {"mode": mode.name}
    try:
        with inductor_settings(recipe) as settings:
            result["inductor"] = settings
            _compile(engine, mode)
            cache_before = CacheCounts.now()
            started = time.perf_counter()
            request(urls[0])
            result["first_request_seconds"] = round(time.perf_counter() - started, 2)
            graphs_after_first = _graphs()
            warm = [request(urls[0]) for _ in range(runs)]
            result["warm_cached_lora_seconds"] = summarize([o.generation_time_seconds for o in warm])
            result["cached_swap_ms"] = summarize([swap_ms(o) for o in warm])
            cycle: list[str | None] = [*urls, None]
            for index in range(alternating):
                # The same size as the rest (another size is another graph): few steps, so many swaps fit the budget.
                request(cycle[index % len(cycle)], steps=alternating_steps, scale=0.5 + 0.5 * (index % 2))
            result["alternating_requests"] = alternating
            result["recompilations"] = _graphs() - graphs_after_first
            compiled_here = CacheCounts.now().since(cache_before)
            result["graphs_compiled"], result["graphs_from_cache"] = compiled_here.misses, compiled_here.hits
            with tempfile.TemporaryDirectory() as folder:
                result["compile_cache_mib"] = round(CompileCache(Path(folder), device).save() / 1024 / 1024, 1)
            if device.type == "cuda":
                result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
            if from_cache:
                result["from_cache"] = _start_from_cache(engine, request, urls[0], mode)
    except Exception as error:  # an op inductor cannot compile here, a CUDA-graph refusal: say so, go on
        result["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    finally:
        _uncompile(engine)
        torch._dynamo.reset()
    result["fingerprint_identical"] = snapshot.identical()
    result["vae_fp32_retries"] = engine.decoder.fp32_retries
    return result


def _start_from_cache(engine: SdxlLoraEngine, request: Request, url: str, mode: CompileMode) -> dict[str, Any]:
    """Forget the compiled code and compile again: dynamo traces anew, inductor finds every graph in its local cache
    (as a container does after loading the saved cache), so the first request's time is a warm start's."""
    _uncompile(engine)
    torch._dynamo.reset()
    _compile(engine, mode)
    before = CacheCounts.now()
    started = time.perf_counter()
    request(url)
    seconds = time.perf_counter() - started
    counts = CacheCounts.now().since(before)
    return {
        "first_request_seconds": round(seconds, 2),
        "graphs_compiled": counts.misses,
        "graphs_from_cache": counts.hits,
    }
