"""Turn benchmark results into a table against the targets, and into docs/benchmarks.md."""

from pathlib import Path
from typing import Any

TARGETS = {
    "warm_cached_lora_seconds": 2.5,
    "cached_swap_ms": 100.0,
    "uncached_swap_from_disk_ms": 500.0,
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


def compiled_rows(fast: dict[str, Any] | None, eager: dict[str, float]) -> list[str]:
    """The compiled UNet's rows, beside the eager figure they compare with (none when it was not asked for)."""
    if fast is None:
        return []
    if "error" in fast:
        return [f"| compiled UNet | not measured: {fast['error']} | | | |"]
    warm = fast["warm_cached_lora_seconds"]
    return [
        f"| compiled: warm request incl. cached LoRA swap (s) | {warm['p50']} | {warm['p90']} | eager p50 "
        f"{eager['p50']} | {'faster' if warm['p50'] < eager['p50'] else 'not faster'} |",
        f"| compiled: first request, compiling (s) | {fast['first_request_seconds']} | | | |",
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
