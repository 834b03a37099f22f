"""Turn benchmark results into a table against the targets, and into docs/benchmarks.md."""

from pathlib import Path
from typing import Any

# Issue 12's targets on one H100 (the warm request's first bar was 2.5 s).
TARGETS = {
    "warm_cached_lora_seconds": 1.5,
    "cached_swap_ms": 10.0,
    "uncached_swap_from_disk_ms": 300.0,
}
BEGIN = "<!-- gpu-bench:begin -->"
END = "<!-- gpu-bench:end -->"


def _verdict(value: float, target: float) -> str:
    return "meets" if value <= target else "misses"


def table(results: dict[str, Any]) -> str:
    """A Markdown table: metric, p50, p90, target, verdict (targets apply to the full-size run on a GPU)."""
    full = not results["config"]["tiny"]
    rows = [
        "| metric | p50 | p90 | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in (
        ("warm_no_lora_seconds", "warm request, no LoRA (s)"),
        ("warm_cached_lora_seconds", "warm request incl. cached LoRA swap (s)"),
        ("cached_swap_ms", "cached LoRA swap: load + unload (ms)"),
        ("uncached_swap_from_disk_ms", "uncached swap from local disk: read + check + load + unload (ms)"),
    ):
        stats = results[key]
        target = TARGETS.get(key)
        verdict = _verdict(stats["p50"], target) if (target is not None and full) else "—"
        rows.append(f"| {label} | {stats['p50']} | {stats['p90']} | {target if target else '—'} | {verdict} |")
    contamination = results["contamination"]
    identical = contamination["fingerprint_identical"] and contamination["first_image_repeats_exactly"]
    rows.append(
        f"| base weights after {contamination['requests']} alternating requests over 3 LoRAs | "
        f"{'bit-identical' if contamination['fingerprint_identical'] else 'CHANGED'} | "
        f"first image repeats: {contamination['first_image_repeats_exactly']} | bit-identical | "
        f"{'meets' if identical else 'misses'} |"
    )
    replaced = results["replaced_strategies"]
    adapter = replaced["diffusers_adapter_swap_ms"]
    rows.append(
        f"| replaced way 1: diffusers adapter load + set + unload per request (ms) | {adapter['p50']} | "
        f"{adapter['p90']} | — | for comparison |"
    )
    residue = replaced["fuse_unfuse_residue"]
    rows.append(
        f"| replaced way 2: fuse_lora → unfuse_lora, UNet tensors changed | {residue['changed_tensors']} of "
        f"{residue['total_tensors']} | max abs diff {residue['max_abs_difference']:.3g} | 0 | for comparison |"
    )
    rows += half_vae_rows(results.get("half_vae"), results["warm_cached_lora_seconds"])
    rows += compiled_rows(results.get("compiled"), results["warm_cached_lora_seconds"])
    rows.append(f"| pristine copies of LoRA-touched layers (GiB) | {results['pristine_copy_gib']} | | | |")
    peak = results["peak_gpu_memory_gib"]
    rows.append(f"| peak GPU memory (GiB) | {peak if peak is not None else 'n/a (CPU)'} | | | |")
    config = results["config"]
    header = (
        f"Device: {results['device']} · {results['dtype']} · {config['width']}×{config['height']}, "
        f"{config['steps']} steps, cfg {config['cfg']} · {config['runs']} runs each · "
        f"LoRA rank {results['lora']['rank']}, {results['lora']['bytes'] / 1024 / 1024:.1f} MiB · "
        f"model: {results['base_model']} · versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    )
    return header + "\n\n" + "\n".join(rows)


def _against(label: str, warm: dict[str, float], eager: dict[str, float]) -> str:
    return (
        f"| {label}: warm request incl. cached LoRA swap (s) | {warm['p50']} | {warm['p90']} | eager p50 "
        f"{eager['p50']} | {'faster' if warm['p50'] < eager['p50'] else 'not faster'} |"
    )


def half_vae_rows(half: dict[str, Any] | None, eager: dict[str, float]) -> list[str]:
    """The half-precision VAE's row (eager UNet), when measured (a half-precision model with --compile)."""
    if half is None:
        return []
    return [
        _against("fp16 VAE decode", half["warm_cached_lora_seconds"], eager),
        f"| fp16 VAE decode: images decoded again in fp32 (overflow) | {half['fp32_retries']} | | 0 | |",
    ]


def compiled_rows(fast: dict[str, Any] | None, eager: dict[str, float]) -> list[str]:
    """The compiled UNet's rows, beside the eager figure they compare with (none when it was not asked for)."""
    if fast is None:
        return []
    if "error" in fast:
        return [f"| compiled UNet | not measured: {fast['error']} | | | |"]
    swap = fast["cached_swap_ms"]
    peak = fast["peak_gpu_memory_gib"]
    return [
        _against("fast path: compiled UNet, fp16 VAE", fast["warm_cached_lora_seconds"], eager),
        f"| compiled: cached LoRA swap (ms) | {swap['p50']} | {swap['p90']} | {TARGETS['cached_swap_ms']} | |",
        f"| compiled: first request, compiling (s) | {fast['first_request_seconds']} | | | |",
        f"| compiled: graphs compiled / found in inductor's local cache | {fast['graphs_compiled']} | "
        f"{fast['graphs_from_cache']} | | |",
        f"| compiled: portable compile cache, as saved to the Volume (MiB) | {fast['compile_cache_mib']} | | | |",
        f"| compiled: peak GPU memory (GiB) | {peak if peak is not None else 'n/a (CPU)'} | | | |",
        f"| compiled: recompilations over {fast['alternating_requests']} alternating requests | "
        f"{fast['recompilations']} | | 0 | {'meets' if fast['recompilations'] == 0 else 'misses'} |",
        f"| compiled: base weights after them | "
        f"{'bit-identical' if fast['fingerprint_identical'] else 'CHANGED'} | | bit-identical | "
        f"{'meets' if fast['fingerprint_identical'] else 'misses'} |",
    ]


def write_docs(results: dict[str, Any], docs: Path, measured_at: str) -> None:
    """Replace the GPU section of docs/benchmarks.md with this run's table."""
    text = docs.read_text(encoding="utf-8")
    section = f"{BEGIN}\nMeasured {measured_at}.\n\n{table(results)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    docs.write_text(text, encoding="utf-8")
