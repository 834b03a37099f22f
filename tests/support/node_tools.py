"""The JavaScript document linters (tools/node, from scripts/ensure-node-tools.sh): run one, or skip saying why."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "tools" / "node" / "node_modules" / ".bin"


def node_tool(name: str) -> Path:
    """The path of an installed linter (`redocly`, `asyncapi`), or skip the test."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (scripts/ensure-node-tools.sh installs it with npm ci)")
    return path


def run_node_tool(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a linter from the repository root with its telemetry off (there is no internet to report to)."""
    env = {**os.environ, "REDOCLY_TELEMETRY": "off", "DO_NOT_TRACK": "1", "NO_COLOR": "1", "FORCE_COLOR": "0"}
    return subprocess.run(
        [str(node_tool(name)), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
