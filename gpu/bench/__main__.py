"""CLI: `python -m gpu.bench` (full-size SDXL on a GPU) or `python -m gpu.bench --tiny` (CPU, seconds)."""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny random SDXL on CPU (for tests and smoke runs)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per phase (at least 5 for the report)")
    parser.add_argument("--contamination-requests", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default bench-results/…)")
    parser.add_argument("--write-docs", type=Path, default=None, help="update this benchmarks.md with the table")
    parser.add_argument(
        "--compile", action="store_true", help="also the compiled UNet (WORKER_COMPILE), side by side, after the rest"
    )
    args = parser.parse_args(argv)

    import torch
    from diffusers.utils import logging as diffusers_logging

    from gpu.bench.report import table, write_docs
    from gpu.bench.runner import FULL, TINY, run_benchmark

    diffusers_logging.set_verbosity_error()
    config = TINY if args.tiny else FULL
    if args.runs is not None:
        config = dataclasses.replace(config, runs=max(1, args.runs))
    if args.contamination_requests is not None:
        config = dataclasses.replace(config, contamination_requests=max(1, args.contamination_requests))
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.float16
    else:
        print("no CUDA device: the full benchmark needs a GPU (use --tiny on CPU)", file=sys.stderr)
        return 2

    out = args.out or Path("bench-results") / f"gpu-bench-{'tiny' if args.tiny else 'full'}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(results: dict[str, Any]) -> None:
        measured_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["measured_at"] = measured_at
        print(table(results), flush=True)
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"\nresults: {out}", flush=True)
        if args.write_docs:
            write_docs(results, args.write_docs, measured_at)
            print(f"table written to {args.write_docs}", flush=True)

    def eager_done(results: dict[str, Any]) -> None:
        # Recorded now: a run stopped while compiling (a device's time limit) still leaves the eager figures.
        record(results)
        print("\neager phases recorded; the fast path's phases follow (compiling takes minutes)\n", flush=True)

    results = run_benchmark(config, device, dtype, compiled=args.compile, on_eager_done=eager_done)
    record(results)
    contamination = results["contamination"]
    fast = results["compiled"] or {}
    exact = contamination["fingerprint_identical"] and contamination["first_image_repeats_exactly"]
    return 0 if exact and fast.get("fingerprint_identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
