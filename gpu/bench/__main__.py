"""CLI: `python -m gpu.bench` (full-size SDXL on a GPU) or `python -m gpu.bench --tiny` (CPU, seconds).

On a lent GPU, scripts/device-gpu-bench.sh runs it so that one call of at most 7 minutes fits: `--skip-measured`
leaves out what earlier runs measured, `--budget-seconds` keeps a compile mode from starting too late, and the JSON
and the docs table are written after every phase (a run stopped by the device's limit keeps what it finished).
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny random SDXL on CPU (for tests and smoke runs)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per phase (at least 5 for the report)")
    parser.add_argument("--contamination-requests", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default bench-results/…)")
    parser.add_argument("--write-docs", type=Path, default=None, help="update this benchmarks.md with the table")
    parser.add_argument("--compile", action="store_true", help="same as --compile-modes default")
    parser.add_argument(
        "--compile-modes",
        default="",
        help="comma-separated, run in this order: default, reduce-overhead, max-autotune-no-cudagraphs, each "
        "optionally +vae (the VAE decoder compiled too); 'all' for default,reduce-overhead,default+vae,"
        "max-autotune-no-cudagraphs",
    )
    parser.add_argument("--no-inductor-recipe", action="store_true", help="inductor's defaults, not diffusers' recipe")
    parser.add_argument("--no-from-cache", action="store_true", help="skip each mode's second start from the cache")
    parser.add_argument(
        "--skip-measured",
        action="store_true",
        help="skip the phases earlier runs measured: the two replaced LoRA strategies, and the alternation at its "
        "full count (20 requests instead of 100)",
    )
    parser.add_argument("--alternating", type=int, default=None, help="alternating requests (overrides the count)")
    parser.add_argument("--swap-variants", default="before,direct,staged", help="the swap alone: ways to compare")
    parser.add_argument("--swap-runs", type=int, default=20)
    parser.add_argument("--budget-seconds", type=float, default=None, help="stop starting compile modes past this")
    parser.add_argument("--compile-min-seconds", type=float, default=150.0, help="budget a compile mode needs left")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    import torch
    from diffusers.utils import logging as diffusers_logging

    from gpu.bench.compile_modes import DEFAULT_ORDER, parse_modes
    from gpu.bench.report import table, write_docs
    from gpu.bench.runner import FULL, TINY, BenchOptions, run_benchmark

    diffusers_logging.set_verbosity_error()
    config = TINY if args.tiny else FULL
    if args.runs is not None:
        config = dataclasses.replace(config, runs=max(1, args.runs))
    if args.contamination_requests is not None:
        config = dataclasses.replace(config, contamination_requests=max(1, args.contamination_requests))
    modes_text = ",".join(DEFAULT_ORDER) if args.compile_modes == "all" else args.compile_modes
    if args.compile and not modes_text:
        modes_text = "default"
    options = BenchOptions(
        skip_measured=args.skip_measured,
        compile_modes=parse_modes(modes_text),
        inductor_recipe=not args.no_inductor_recipe,
        from_cache=not args.no_from_cache,
        swap_variants=tuple(v for v in args.swap_variants.split(",") if v),
        swap_runs=max(1, args.swap_runs),
        budget_seconds=args.budget_seconds,
        compile_min_seconds=args.compile_min_seconds,
        alternating=args.alternating,
    )
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.float16
    else:
        print("no CUDA device: the full benchmark needs a GPU (use --tiny on CPU)", file=sys.stderr)
        return 2

    out = args.out or Path("bench-results") / f"gpu-bench-{'tiny' if args.tiny else 'full'}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    reported: set[str] = set()

    def record(results: dict[str, Any]) -> None:
        # After every phase: the JSON and the docs table as they stand, so a run stopped here keeps them.
        measured_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["measured_at"] = measured_at
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")
        if args.write_docs:
            write_docs(results, args.write_docs, measured_at)
        for name in [*results["phase_seconds"], *results["skipped"]]:
            if name not in reported:
                reported.add(name)
                done = results["phase_seconds"].get(name)
                why = results["skipped"].get(name)
                print(f"phase {name}: " + (f"done in {done} s" if why is None else f"skipped ({why})"), flush=True)

    results = run_benchmark(config, device, dtype, options, on_phase=record)
    print("\n" + table(results), flush=True)
    print(f"\nresults: {out}" + (f"; table written to {args.write_docs}" if args.write_docs else ""), flush=True)
    contamination = results.get("contamination") or {}
    exact = contamination.get("fingerprint_identical", True) and contamination.get("first_image_repeats_exactly", True)
    compiled_exact = all(m.get("fingerprint_identical", True) for m in results["compile_modes"].values() if m)
    return 0 if exact and compiled_exact and results["weights_bit_identical_at_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
