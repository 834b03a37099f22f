"""CLI: `python -m gpu.bench.swap`: the cached swap alone (gpu/bench/swap_phase.py), today's fuser beside the one
before issue 25, on the tiny UNet or the full-size SDXL UNet built from its config (random weights), on the CPU, a
GPU, or the meta device (host dispatch cost only). Prints a table, writes JSON, and with `--write-docs` its section
of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpu.bench.docs_section import write_marked

MiB = 1024 * 1024


def build_unet(model: str, device: Any, dtype: Any) -> Any:
    """The tiny UNet, or the full-size SDXL UNet: made on the meta device (free), given uninitialised storage on
    `device` in `dtype`, then filled with seeded random values (so no fp32 copy of 2.6 B parameters ever exists)."""
    import torch
    from diffusers import UNet2DConditionModel

    from gpu.tiny.model import TINY_UNET_CONFIG
    from gpu.tiny.sdxl_config import SDXL_UNET_CONFIG

    config = SDXL_UNET_CONFIG if model == "full" else TINY_UNET_CONFIG
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to(dtype=dtype)
    if device.type == "meta":
        return unet
    unet = unet.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    return unet


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gpu.bench.loras import rank_for_bytes, synthetic_deltas
    from gpu.bench.machine import machine_name
    from gpu.bench.swap_phase import swap_phase, variants
    from gpu.engine.lora.groups import group_update_bytes
    from gpu.engine.lora.plan import grouped

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    unet = build_unet(args.model, device, dtype)
    holder = SimpleNamespace(unet=unet, text_encoder=None, text_encoder_2=None)
    lora_bytes = args.lora_mib * MiB
    rank = rank_for_bytes(holder, lora_bytes, 2)
    plans = [grouped(synthetic_deltas(holder, rank, seed, torch.float16)) for seed in range(args.loras)]
    built = time.perf_counter() - started
    # Each way's own cap: a layer per group on a CPU (measured faster there), 128 MiB on a GPU, and on meta the GPU's.
    cap = args.group_mib * MiB if args.group_mib is not None else group_update_bytes(torch.device("cuda"))
    if args.group_mib is None and device.type == "cpu":
        cap = group_update_bytes(device)
    results = swap_phase(holder, plans, device, args.runs, variants(args.variants.split(","), device, cap))
    return {
        "model": args.model,
        "device": args.device,
        "machine": machine_name(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "lora": {"rank": rank, "layers": len(plans[0].deltas), "count": args.loras, "target_mib": args.lora_mib},
        "group_cap_mib": round(cap / MiB, 1),
        "runs": args.runs,
        "build_seconds": round(built, 1),
        "variants": results,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(results: dict[str, Any]) -> str:
    """One row per way: fuse and restore (wall and host p50, ms), ops dispatched, kernels launched (GPU)."""
    lora = results["lora"]
    head = (
        f"Machine: {results['machine']} · device {results['device']} · {results['model']} UNet, {results['dtype']} · "
        f"{lora['count']} LoRAs of rank {lora['rank']} over {lora['layers']} layers (~{lora['target_mib']} MiB "
        f"each, fp16) · group cap {results['group_cap_mib']} MiB · {results['runs']} alternating swaps · torch "
        f"{results['torch']} · {results['measured_at']}"
    )
    rows = [
        "| way | groups | fuse ms (p50 / p90) | fuse host ms | restore ms (p50 / p90) | restore host ms | "
        "swap ms p50 | ops fuse / restore | kernels fuse / restore |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    meta = results["device"] == "meta"
    for name, v in results["variants"].items():
        kernels = "—" if v["kernels_fuse"] is None else f"{v['kernels_fuse']} / {v['kernels_restore']}"
        # On meta nothing runs and its foreach/comparison kernels are Python: its times are no device's, only its ops.
        times = (
            ["—"] * 5
            if meta
            else [
                f"{v['fuse_ms']['p50']} / {v['fuse_ms']['p90']}",
                str(v["fuse_host_ms"]["p50"]),
                f"{v['restore_ms']['p50']} / {v['restore_ms']['p90']}",
                str(v["restore_host_ms"]["p50"]),
                str(v["swap_ms"]["p50"]),
            ]
        )
        rows.append(
            f"| {name} | {v['groups']} | "
            + " | ".join(times)
            + f" | {v['ops_fuse']} / {v['ops_restore']} | {kernels} |"
        )
    return head + "\n\n" + "\n".join(rows)


def write_docs(results: dict[str, Any], docs: Path) -> None:
    """Replace this model and device's section of docs/benchmarks.md (between its markers) with this run's table:
    each (model, device) pair keeps its own, so runs on several machines stand side by side."""
    begin, end = (f"<!-- swap-bench:{results['model']}-{results['device']}:{side} -->" for side in ("begin", "end"))
    write_marked(docs, begin, end, table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench.swap", description=__doc__)
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or meta (host dispatch cost only)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--variants", default="before,direct,staged", help="comma-separated: before,direct,staged,auto")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--loras", type=int, default=3)
    parser.add_argument("--lora-mib", type=float, default=50.0, help="size of each LoRA (fp16), as a file")
    parser.add_argument("--group-mib", type=float, default=None, help="group size cap (default: the device's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--write-docs", type=Path, default=None, help="replace this model and device's table there")
    args = parser.parse_args(argv)
    results = run(args)
    text = table(results)
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.write_docs:
        write_docs(results, args.write_docs)
    return 0 if all(v["layers_reported_altered"] == 0 for v in results["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
