"""The benchmark runs end to end on CPU with the tiny model, the compiled UNet beside the eager one, with the device
script's flags (phases already measured skipped, the swap alone beside the replaced fuser), and reports every figure
it promises, recording the JSON after each phase."""

import json
import subprocess
import sys
from pathlib import Path


def test_tiny_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n", encoding="utf-8")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu.bench",
            "--tiny",
            "--runs",
            "2",
            "--contamination-requests",
            "6",
            "--out",
            str(out),
            "--write-docs",
            str(docs),
            "--compile-modes",
            "default",
            "--no-from-cache",
            "--skip-measured",
            "--swap-runs",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads(out.read_text())
    for key in ("warm_no_lora_seconds", "warm_cached_lora_seconds", "cached_swap_ms", "uncached_swap_from_disk_ms"):
        assert results[key]["n"] == 2 and results[key]["p50"] > 0
    assert results["contamination"]["fingerprint_identical"] is True
    assert results["contamination"]["first_image_repeats_exactly"] is True
    assert results["weights_bit_identical_at_end"] is True
    # What the device script skips was skipped, and said so; the swap alone has every way, fuse and restore apart.
    assert "replaced_strategies" not in results and "measured before" in results["skipped"]["replaced_strategies"]
    assert set(results["swap"]) == {"before", "direct", "staged"}
    assert all(v["fuse_ms"]["n"] == 3 and v["layers_reported_altered"] == 0 for v in results["swap"].values())
    compiled = results["compile_modes"]["default"]
    assert compiled["recompilations"] == 0 and compiled["fingerprint_identical"] is True
    assert compiled["first_request_seconds"] > 0 and compiled["warm_cached_lora_seconds"]["n"] == 2
    assert compiled["inductor"]["freezing"] is False
    # Each phase was recorded as it finished (the log says so in order; the eager ones before the compile).
    log = completed.stdout
    assert log.index("phase warm: done") < log.index("phase swap: done") < log.index("phase compile:default: done")
    assert "| swap alone: way |" in log and "| default | " in log
    written = docs.read_text()
    assert "<!-- gpu-bench:begin -->" in written and "bit-identical" in written and "| before | 96 |" in written
