"""Turn benchmark results into tables against the targets, and into docs/benchmarks.md (a phase not run yet, or
skipped, is a row saying so: the tables are written after every phase)."""

from pathlib import Path
from typing import Any

from gpu.bench.docs_section import write_marked

# Issue 25's targets on one H100.
TARGETS = {
    "warm_cached_lora_seconds": 1.25,
    "cached_swap_ms": 10.0,
    "uncached_swap_from_disk_ms": 150.0,
}
BEGIN = "<!-- gpu-bench:begin -->"
END = "<!-- gpu-bench:end -->"


def _verdict(value: float, target: float) -> str:
    return "meets" if value <= target else "misses"


def _pending(results: dict[str, Any], name: str) -> str:
    why = results.get("skipped", {}).get(name)
    return f"skipped: {why}" if why else "not reached"


def table(results: dict[str, Any]) -> str:
    """The eager table (metric, p50, p90, target, verdict; targets apply to the full-size run on a GPU), then the
    swap alone and the compile modes."""
    full = not results["config"]["tiny"]
    rows = [
        "| metric | p50 | p90 | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in (
        ("warm_no_lora_seconds", "warm request, no LoRA (s)"),
        ("warm_cached_lora_seconds", "warm request incl. cached LoRA swap (s)"),
        ("cached_swap_ms", "cached LoRA swap: fuse + restore (ms)"),
        ("uncached_swap_from_disk_ms", "uncached swap from local disk: read + check + plan + fuse + restore (ms)"),
    ):
        stats = results.get(key)
        target = TARGETS.get(key)
        if stats is None:
            rows.append(f"| {label} | {_pending(results, key)} | | {target or '—'} | |")
            continue
        verdict = _verdict(stats["p50"], target) if (target is not None and full) else "—"
        rows.append(f"| {label} | {stats['p50']} | {stats['p90']} | {target if target else '—'} | {verdict} |")
    rows += _memory_rows(results)
    rows += _contamination_rows(results)
    rows += _replaced_rows(results)
    rows += half_vae_rows(results.get("half_vae"), results.get("warm_cached_lora_seconds"))
    if "pristine_copy_gib" in results:
        rows.append(f"| pristine copies of LoRA-touched layers (GiB) | {results['pristine_copy_gib']} | | | |")
        peak = results["peak_gpu_memory_gib"]
        rows.append(f"| peak GPU memory, eager (GiB) | {peak if peak is not None else 'n/a (CPU)'} | | | |")
    config = results["config"]
    header = (
        f"Device: {results['device']} · {results['dtype']} · {config['width']}×{config['height']}, "
        f"{config['steps']} steps, cfg {config['cfg']} · {config['runs']} runs each · "
        f"LoRA rank {results['lora']['rank']}, {results['lora']['bytes'] / 1024 / 1024:.1f} MiB · "
        f"model: {results['base_model']} · versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    )
    parts = [header, "\n".join(rows), swap_table(results), compile_table(results)]
    return "\n\n".join(part for part in parts if part)


def _memory_rows(results: dict[str, Any]) -> list[str]:
    memory = results.get("swap_memory")
    if memory is None:
        return [f"| GPU memory allocated before / after 100 swaps | {_pending(results, 'swap_memory')} | | equal | |"]
    equal = memory["allocated_before"] == memory["allocated_after"]
    return [
        f"| GPU memory allocated before / after {memory['swaps']} swaps (bytes) | {memory['allocated_before']} | "
        f"{memory['allocated_after']} | equal | {'meets' if equal else 'misses'} |"
    ]


def _contamination_rows(results: dict[str, Any]) -> list[str]:
    contamination = results.get("contamination")
    if contamination is None:
        return [f"| base weights after alternating requests | {_pending(results, 'contamination')} | | | |"]
    identical = contamination["fingerprint_identical"] and contamination["first_image_repeats_exactly"]
    return [
        f"| base weights after {contamination['requests']} alternating requests over 3 LoRAs | "
        f"{'bit-identical' if contamination['fingerprint_identical'] else 'CHANGED'} | "
        f"first image repeats: {contamination['first_image_repeats_exactly']} | bit-identical | "
        f"{'meets' if identical else 'misses'} |"
    ]


def _replaced_rows(results: dict[str, Any]) -> list[str]:
    replaced = results.get("replaced_strategies")
    if replaced is None:
        return [
            f"| replaced ways (diffusers adapters; fuse/unfuse) | {_pending(results, 'replaced_strategies')} | | | |"
        ]
    adapter = replaced["diffusers_adapter_swap_ms"]
    residue = replaced["fuse_unfuse_residue"]
    return [
        f"| replaced way 1: diffusers adapter load + set + unload per request (ms) | {adapter['p50']} | "
        f"{adapter['p90']} | — | for comparison |",
        f"| replaced way 2: fuse_lora → unfuse_lora, UNet tensors changed | {residue['changed_tensors']} of "
        f"{residue['total_tensors']} | max abs diff {residue['max_abs_difference']:.3g} | 0 | for comparison |",
    ]


def _against(label: str, warm: dict[str, float], eager: dict[str, float] | None) -> str:
    if eager is None:
        return f"| {label}: warm request incl. cached LoRA swap (s) | {warm['p50']} | {warm['p90']} | | |"
    return (
        f"| {label}: warm request incl. cached LoRA swap (s) | {warm['p50']} | {warm['p90']} | eager p50 "
        f"{eager['p50']} | {'faster' if warm['p50'] < eager['p50'] else 'not faster'} |"
    )


def half_vae_rows(half: dict[str, Any] | None, eager: dict[str, float] | None) -> list[str]:
    """The half-precision VAE's row (eager UNet), when measured (a half-precision model with a compile mode)."""
    if half is None:
        return []
    return [
        _against("fp16 VAE decode", half["warm_cached_lora_seconds"], eager),
        f"| fp16 VAE decode: images decoded again in fp32 (overflow) | {half['fp32_retries']} | | 0 | |",
    ]


def swap_table(results: dict[str, Any]) -> str:
    """The swap alone: each way's fuse and restore, wall and host p50 (ms), ops dispatched, kernels launched."""
    swap = results.get("swap")
    if swap is None:
        return f"Swap alone: {_pending(results, 'swap')}."
    rows = [
        "| swap alone: way | groups | fuse ms p50 / p90 | fuse host ms | restore ms p50 / p90 | restore host ms | "
        "ops fuse / restore | kernels fuse / restore |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in swap.items():
        kernels = "—" if v["kernels_fuse"] is None else f"{v['kernels_fuse']} / {v['kernels_restore']}"
        rows.append(
            f"| {name} | {v['groups']} | {v['fuse_ms']['p50']} / {v['fuse_ms']['p90']} | {v['fuse_host_ms']['p50']} | "
            f"{v['restore_ms']['p50']} / {v['restore_ms']['p90']} | {v['restore_host_ms']['p50']} | "
            f"{v['ops_fuse']} / {v['ops_restore']} | {kernels} |"
        )
    return "\n".join(rows)


def compile_table(results: dict[str, Any]) -> str:
    """One row per compile mode asked for: warm p50 beside eager, cached swap, first request, its start from the
    local cache, recompilations over the alternating requests, weights after them, compile cache and peak memory."""
    modes = results.get("options", {}).get("compile_modes") or []
    if not modes:
        return ""
    eager = results.get("warm_cached_lora_seconds")
    rows = [
        "| compile mode | warm incl. cached swap s p50 / p90 | cached swap ms p50 | first request s (compiling) | "
        "first request s from local cache | recompilations / alternating requests | weights after | "
        "graphs compiled / from cache | cache MiB | peak GPU GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if eager is not None:
        rows.append(f"| eager (for comparison) | {eager['p50']} / {eager['p90']} | | | | | | | | |")
    for name in modes:
        m = results["compile_modes"].get(name)
        if m is None:
            rows.append(f"| {name} | {_pending(results, f'compile:{name}')} | | | | | | | | |")
            continue
        weights = "bit-identical" if m["fingerprint_identical"] else "CHANGED"
        if "warm_cached_lora_seconds" not in m:
            rows.append(f"| {name} | failed: {m.get('error', '?')} | | | | | {weights} | | | |")
            continue
        warm, cache = m["warm_cached_lora_seconds"], m.get("from_cache") or {}
        failed = f" (then failed: {m['error']})" if "error" in m else ""
        rows.append(
            f"| {name}{failed} | {warm['p50']} / {warm['p90']} | {m['cached_swap_ms']['p50']} | "
            f"{m['first_request_seconds']} | {cache.get('first_request_seconds', '—')} | "
            f"{m['recompilations']} / {m['alternating_requests']} | {weights} | {m['graphs_compiled']} / "
            f"{m['graphs_from_cache']} | {m['compile_cache_mib']} | {m.get('peak_gpu_memory_gib', 'n/a')} |"
        )
    return "\n".join(rows)


def write_docs(results: dict[str, Any], docs: Path, measured_at: str) -> None:
    """Replace the GPU section of docs/benchmarks.md with this run's tables."""
    done = ", ".join(results.get("phase_seconds", {})) or "none yet"
    write_marked(docs, BEGIN, END, f"Measured {measured_at} (phases done: {done}).\n\n{table(results)}")
