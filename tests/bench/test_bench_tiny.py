"""The benchmark runs end to end on CPU with the tiny model, the compiled UNet beside the eager one, and reports
every figure it promises."""

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
            "--compile",
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
    assert "| cached LoRA swap" in completed.stdout
    compiled = results["compiled"]
    assert compiled["recompilations"] == 0 and compiled["fingerprint_identical"] is True
    assert compiled["first_request_seconds"] > 0 and compiled["warm_cached_lora_seconds"]["n"] == 2
    assert "| compiled: recompilations over 6 alternating requests | 0 |" in completed.stdout
    # The eager table was recorded before compiling started (a device's time limit cannot take it away).
    eager, fast = completed.stdout.split("eager phases recorded", 1)
    assert "| cached LoRA swap" in eager and "| compiled:" not in eager and "| compiled:" in fast
    written = docs.read_text()
    assert "<!-- gpu-bench:begin -->" in written and "bit-identical" in written
