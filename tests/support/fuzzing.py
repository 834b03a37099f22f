"""Running schemathesis (its CLI, in another process) against a live service from the service's committed OpenAPI
document, with an owner's bearer token, every check, bounded examples and a fixed seed; reading its HAR report.

Sized by the environment: `make test` runs the small default (one seed, a few examples per operation), `make
api-fuzz` the full run (API_FUZZ_SEEDS=1,2,3, API_FUZZ_MAX_EXAMPLES=100)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
OPENAPI_DIR = REPO / "docs" / "openapi"
# The small run of `make test`: the same cases every run (a fixed seed), each service's run within seconds.
DEFAULT_MAX_EXAMPLES = 10
DEFAULT_SEEDS = (1,)
SEEDS_ENV = "API_FUZZ_SEEDS"
MAX_EXAMPLES_ENV = "API_FUZZ_MAX_EXAMPLES"
# The CLI's own limit: generous, as the full run's 100 examples per operation take minutes on 2 cores.
RUN_TIMEOUT_SECONDS = 900


def fuzz_seeds() -> tuple[int, ...]:
    """The seeds to run (API_FUZZ_SEEDS, comma-separated), each its own schemathesis run."""
    text = os.environ.get(SEEDS_ENV, "")
    return tuple(int(part) for part in text.split(",") if part.strip()) or DEFAULT_SEEDS


def max_examples() -> int:
    """Examples per operation and phase (API_FUZZ_MAX_EXAMPLES)."""
    return int(os.environ.get(MAX_EXAMPLES_ENV) or DEFAULT_MAX_EXAMPLES)


@dataclass(frozen=True)
class FuzzRun:
    """What the CLI printed and answered, and the statuses each `METHOD path` got (from the HAR report)."""

    returncode: int
    output: str
    statuses: dict[str, set[int]]

    def summary(self) -> str:
        """The CLI's closing lines: the failures found, if any, and the count of test cases."""
        lines = self.output.splitlines()
        start = next((i for i, line in enumerate(lines) if "SUMMARY" in line), max(0, len(lines) - 12))
        return "\n".join(line for line in lines[start:] if line.strip())


def statuses_by_operation(har_path: Path) -> dict[str, set[int]]:
    """The statuses each `METHOD path` answered in the run, from its HAR report."""
    found: dict[str, set[int]] = {}
    for entry in json.loads(har_path.read_text(encoding="utf-8"))["log"]["entries"]:
        url = httpx.URL(entry["request"]["url"])
        found.setdefault(f"{entry['request']['method']} {url.path}", set()).add(entry["response"]["status"])
    return found


def run_schemathesis(
    service: str,
    base_url: str,
    authorization: str,
    workdir: Path,
    *,
    seed: int,
    hooks: str | None = None,
    env: Mapping[str, str] | None = None,
) -> FuzzRun:
    """Fuzz `base_url` from docs/openapi/<service>.json (the committed document; a unit test keeps it equal to the
    served one) with every check but `ignored_auth`: auth is sent as the header given, and each service tests its
    refusals route by route. No check is narrowed for any operation: what the schema allows must be accepted.
    `hooks` (a module of tests.support) points positive cases at what this run created (an avatar id: the schema
    cannot know which exist) and adds checks of its own."""
    har = workdir / f"run-{seed}.har"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(OPENAPI_DIR / f"{service}.json"),
        "--url",
        base_url,
        "--checks",
        "all",
        "--exclude-checks",
        "ignored_auth",
        "--header",
        f"Authorization: {authorization}",
        "--max-examples",
        str(max_examples()),
        "--seed",
        str(seed),
        "--request-timeout",
        "10",
        "--report",
        "har",
        "--report-har-path",
        str(har),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
        cwd=workdir,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "NO_COLOR": "1",
            "PYTHONPATH": str(REPO),
            **({"SCHEMATHESIS_HOOKS": hooks} if hooks else {}),
            **(env or {}),
        },
    )
    statuses = statuses_by_operation(har) if har.exists() else {}
    return FuzzRun(result.returncode, result.stdout[-8000:] + result.stderr[-2000:], statuses)
