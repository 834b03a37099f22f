"""Before serving: one short generation per warm-up size, so compiled code is loaded (or compiled) then, not on a
user's request; the compile cache is saved (and committed) after each size that compiled anything new, and at the
end the compiled UNet is sealed: a shape not warmed runs eager, counted (gpu/engine/compile_gate.py), never compiles.

`python -m gpu.serve.warmup` does it for the engine the environment describes and prints what happened as JSON (the
deployment can run it to fill the cache Volume; the tests run it twice to see the second process load the first's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from contracts.worker import WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.compile_cache import CacheCounts, CompileCache
from gpu.engine.compiled import gate_compiled_unet, is_compiled, uncompile_unet
from gpu.engine.engine import SdxlLoraEngine
from gpu.serve.settings import WorkerSettings

log = logging.getLogger("gpu.serve.warmup")
WARMUP_STEPS = 2  # the first step compiles, the second runs the compiled code through its guards


@dataclass
class WarmUpReport:
    """What the warm-up did: per size its seconds and image digest; the cache's hits and misses; what was saved."""

    compiled: bool
    # Why the compiled UNet was dropped for eager (its warm-up failed), if it was.
    compile_failed: str | None = None
    # The compiled UNet serves the warmed shapes only; any other runs eager (False: eager, or nothing warmed).
    sealed: bool = False
    cache_loaded: bool = False
    cache_hits: int = 0
    cache_misses: int = 0
    # The size of the last file written (each save holds everything compiled or loaded so far).
    cache_bytes_saved: int = 0
    # Per size that compiled anything new: the bytes of the file saved (and committed) right after it.
    cache_saved: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    image_sha256: dict[str, str] = field(default_factory=dict)


def warm_up(
    engine: SdxlLoraEngine, settings: WorkerSettings, commit: Callable[[], object] = lambda: None
) -> WarmUpReport:
    """Generate at each of `settings.warmup_sizes`; with a compiled UNet and a cache folder, load the cache first,
    and after each size that compiled anything rather than loading it save the cache and `commit` (e.g. the
    Volume's): a container stopped during a later size (the start-up timeout) still leaves the earlier ones. Then
    the compiled UNet is sealed, so a shape or cfg not warmed runs eager on a request instead of compiling. A compiled
    UNet whose warm-up fails is dropped for eager and the size tried again: the worker serves slower rather than not
    at all. A failed eager warm-up is logged, never raised (each request answers for itself)."""
    report = WarmUpReport(compiled=is_compiled(engine.pipeline))
    cache_dir = settings.compile_cache_dir
    cache = CompileCache(cache_dir, engine.device) if report.compiled and cache_dir is not None else None
    if cache is not None:
        report.cache_loaded = cache.load()
    gate = gate_compiled_unet(engine.pipeline) if report.compiled else None
    before = CacheCounts.now()
    # One graph per size: more sizes than dynamo's limit (8) would leave the last ones eager without a word.
    room = max(torch._dynamo.config.recompile_limit, len(settings.warmup_sizes))
    with torch._dynamo.config.patch(recompile_limit=room):
        for width, height in settings.warmup_sizes:
            _warm_up_size(engine, width, height, report, cache, commit)
    counts = CacheCounts.now().since(before)
    report.cache_hits, report.cache_misses = counts.hits, counts.misses
    if gate is not None and report.compiled:
        if settings.warmup_sizes:
            gate.seal()
            report.sealed = True
        else:
            log.warning("compiled UNet without WORKER_WARMUP_SIZES: each new size compiles on its first request")
    log.info("warm-up done: %s", json.dumps(asdict(report)))
    return report


def _warm_up_size(
    engine: SdxlLoraEngine,
    width: int,
    height: int,
    report: WarmUpReport,
    cache: CompileCache | None,
    commit: Callable[[], object],
) -> None:
    label = f"{width}x{height}"
    started = time.perf_counter()
    before = CacheCounts.now()
    outcome = _generate(engine, width, height)
    if isinstance(outcome, WorkerError) and report.compiled:
        report.compiled, report.compile_failed = False, f"{outcome.error_code}: {outcome.error}"[:300]
        log.error("the compiled UNet failed its warm-up at %s (%s): serving eager", label, report.compile_failed)
        uncompile_unet(engine.pipeline)
        outcome = _generate(engine, width, height)
    report.seconds[label] = round(time.perf_counter() - started, 3)
    if isinstance(outcome, WorkerSuccess):
        report.image_sha256[label] = hashlib.sha256(outcome.image_base64.encode()).hexdigest()
    else:
        log.error("warm-up at %s failed: %s (%s)", label, outcome.error, outcome.error_code)
    if cache is not None and report.compiled and CacheCounts.now().since(before).misses > 0:
        report.cache_bytes_saved = report.cache_saved[label] = cache.save()
        commit()
    log.info(
        "warm-up at %s: %.1f s, image sha256 %s, compile cache saved: %d bytes",
        label,
        report.seconds[label],
        report.image_sha256.get(label, "none"),
        report.cache_saved.get(label, 0),
    )


def _generate(engine: SdxlLoraEngine, width: int, height: int) -> WorkerSuccess | WorkerError:
    return engine.generate(WorkerRequest(prompt="warm-up", width=width, height=height, steps=WARMUP_STEPS, seed=0))


def main() -> int:
    from gpu.serve.bootstrap import build_engine
    from gpu.serve.log_setup import setup_worker_logging

    setup_worker_logging()
    settings = WorkerSettings()
    engine = build_engine(settings)
    report = warm_up(engine, settings)
    print(json.dumps(asdict(report)))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 0 if len(report.image_sha256) == len(settings.warmup_sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
