"""CLI: `python -m gpu.bench.soak` (`make bench-soak`): memory over 1,000 requests alternating over 5 LoRAs on the
tiny model, through the real engine (its memory cache, planning, fuse, denoise, restore).

Resident memory (RSS) and the C heap in use are read every `--every` requests; after the warm-up (every LoRA planned,
resolved and fused at least once; allocator pools grown) RSS must grow by at most 1 %. On a GPU the allocated bytes
are read too, and compared before and after 100 fuse-and-restore cycles of the engine's own fuser: equal if a swap
leaves nothing behind. Prints a table; `--write-docs` replaces its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu.bench.docs_section import write_marked

MiB = 1024 * 1024
BEGIN = "<!-- soak-bench:begin -->"
END = "<!-- soak-bench:end -->"
RSS_GROWTH_LIMIT = 0.01


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from contracts.worker import WorkerRequest, WorkerSuccess
    from gpu.bench.machine import machine_name
    from gpu.bench.memory import device_allocated_bytes, heap_bytes_in_use, rss_bytes
    from gpu.engine.engine import SdxlLoraEngine
    from gpu.engine.lora.cache import DiskLoraCache, MemoryLoraCache
    from gpu.engine.lora.download import DownloadPolicy, url_identity
    from gpu.engine.lora.parse import parse_lora
    from gpu.engine.lora.plan import LoraPlan
    from gpu.engine.lora.store import LoraStore
    from gpu.tiny.lora import write_lora
    from gpu.tiny.model import TINY_BASE_MODEL, build_tiny_pipeline

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    work = Path(tempfile.mkdtemp(prefix="vb-soak-"))
    pipeline = build_tiny_pipeline(work).to(device)
    pipeline.set_progress_bar_config(disable=True)
    disk = DiskLoraCache(work / "lora-cache", budget_bytes=256 * MiB)
    urls = []
    for index in range(args.loras):
        # Never contacted: the files sit in the disk cache, as on a warm Modal Volume.
        url = f"http://127.0.0.1:9/soak/lora-{index}.safetensors"
        disk.put(url_identity(url), write_lora(work / f"lora-{index}.safetensors", seed=index).read_bytes())
        urls.append(url)
    store = LoraStore(DownloadPolicy(mode="local"), MemoryLoraCache[LoraPlan](256 * MiB), disk)
    engine = SdxlLoraEngine(pipeline, store, base_model=TINY_BASE_MODEL, default_timeout_seconds=600)

    def request(index: int) -> None:
        outcome = engine.generate(
            WorkerRequest(
                prompt="a portrait photo of sks person",
                lora_url=urls[index % len(urls)],
                lora_scale=(0.5, 0.8, 1.1)[index % 3],
                width=64,
                height=64,
                steps=args.steps,
                seed=index,
            )
        )
        if not isinstance(outcome, WorkerSuccess):
            raise RuntimeError(f"soak request {index} failed: {outcome}")

    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index in range(args.requests + args.warmup):
        request(index)
        done = index + 1
        if done >= args.warmup and (done - args.warmup) % args.every == 0:
            samples.append(
                {
                    "requests": done - args.warmup,
                    "rss_mib": round(rss_bytes() / MiB, 2),
                    "heap_mib": _mib(heap_bytes_in_use()),
                    "gpu_allocated_mib": _mib(device_allocated_bytes(device)),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(samples[-1], flush=True)
    first, last = samples[0], samples[-1]
    results: dict[str, Any] = {
        "machine": machine_name(device),
        "device": device.type,
        "torch": torch.__version__,
        "loras": args.loras,
        "requests": args.requests,
        "warmup": args.warmup,
        "steps": args.steps,
        "samples": samples,
        "rss_growth": round((last["rss_mib"] - first["rss_mib"]) / first["rss_mib"], 5),
        "heap_growth_mib": None if first["heap_mib"] is None else round(last["heap_mib"] - first["heap_mib"], 2),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.type == "cuda":
        plans = [engine.plan_lora(parse_lora(disk.get(url_identity(url)) or b"")) for url in urls]
        for plan in plans:
            engine.fuser.fuse(plan, 0.9)
            engine.fuser.restore()
        before = device_allocated_bytes(device)
        for index in range(100):
            engine.fuser.fuse(plans[index % len(plans)], 0.5 + 0.25 * (index % 3))
            engine.fuser.restore()
        results["gpu_allocated_over_100_swaps"] = {"before": before, "after": device_allocated_bytes(device)}
    return results


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MiB, 2)


def meets(results: dict[str, Any]) -> bool:
    swaps = results.get("gpu_allocated_over_100_swaps")
    return results["rss_growth"] <= RSS_GROWTH_LIMIT and (swaps is None or swaps["before"] == swaps["after"])


def table(results: dict[str, Any]) -> str:
    head = (
        f"Machine: {results['machine']} · device {results['device']} · torch {results['torch']} · tiny model, 64×64, "
        f"{results['steps']} step(s) · {results['requests']} requests alternating over {results['loras']} LoRAs "
        f"and 3 scales, after {results['warmup']} warm-up requests · {results['measured_at']}"
    )
    rows = [
        "| requests after warm-up | RSS MiB | C heap in use MiB | GPU allocated MiB | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in results["samples"]:
        gpu = "—" if s["gpu_allocated_mib"] is None else s["gpu_allocated_mib"]
        heap = "—" if s["heap_mib"] is None else s["heap_mib"]
        rows.append(f"| {s['requests']} | {s['rss_mib']} | {heap} | {gpu} | {s['seconds']} |")
    growth = results["rss_growth"] * 100
    verdict = "met" if results["rss_growth"] <= RSS_GROWTH_LIMIT else "missed"
    lines = [f"RSS growth after warm-up: {growth:+.2f} % (target ≤ {RSS_GROWTH_LIMIT * 100:.0f} %): {verdict}."]
    if results["heap_growth_mib"] is not None:
        lines.append(f"C heap in use, same span: {results['heap_growth_mib']:+} MiB.")
    swaps = results.get("gpu_allocated_over_100_swaps")
    if swaps:
        lines.append(f"GPU allocated before / after 100 swaps: {swaps['before']} / {swaps['after']} bytes.")
    return head + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(lines)


def write_docs(results: dict[str, Any], docs: Path) -> None:
    write_marked(docs, BEGIN, END, table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench.soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--every", type=int, default=100, help="read memory every this many requests")
    parser.add_argument("--loras", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per request (the soak is about swaps)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where there is a GPU")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    results = run(args)
    print(table(results), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.write_docs:
        write_docs(results, args.write_docs)
    return 0 if meets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
