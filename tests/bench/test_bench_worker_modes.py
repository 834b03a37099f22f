"""The worker-modes benchmark runs against the echo worker and writes its table into its docs section."""

import subprocess
import sys
from pathlib import Path


def test_worker_modes_benchmark_runs_and_writes_its_section(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "tests.bench.worker_modes",
        "--engines",
        "echo",
        "--requests",
        "3",
        "--warmup",
        "1",
    ]
    completed = subprocess.run(
        [*command, "--write-docs", str(docs)], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    written = docs.read_text()
    assert "<!-- worker-modes-bench:start -->" in written and "<!-- worker-modes-bench:end -->" in written
    for mode in ("| echo | sync | 3 |", "| echo | async | 3 |", "| echo | async, worker ignoring wait | 3 |"):
        assert mode in written
    assert "echo: async adds" in written
