"""Running schemathesis (its CLI, in another process) against a live service from the service's committed OpenAPI
document, with an owner's bearer token, every check, bounded examples and a fixed seed; reading its HAR report."""

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
# Bounded and seeded: the same cases every run, each service's run well under a minute.
MAX_EXAMPLES = 25
SEED = 1


@dataclass(frozen=True)
class FuzzRun:
    """What the CLI printed and answered, and the statuses each `METHOD path` got (from the HAR report)."""

    returncode: int
    output: str
    statuses: dict[str, set[int]]


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
    hooks: str,
    env: Mapping[str, str] | None = None,
    config: str = "",
) -> FuzzRun:
    """Fuzz `base_url` from docs/openapi/<service>.json (the committed document; a unit test keeps it equal to the
    served one) with every check but `ignored_auth`: auth is sent as the header given, and each service tests its
    refusals route by route. `hooks` (a module of tests.support) steers positive cases to what the API issued;
    `config` (schemathesis.toml text) narrows a check for an operation where the schema cannot tell."""
    har = workdir / "run.har"
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config, encoding="utf-8")
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config_file),
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
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
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
        timeout=300,
        check=False,
        cwd=workdir,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "NO_COLOR": "1",
            "PYTHONPATH": str(REPO),
            "SCHEMATHESIS_HOOKS": hooks,
            **(env or {}),
        },
    )
    statuses = statuses_by_operation(har) if har.exists() else {}
    return FuzzRun(result.returncode, result.stdout[-8000:] + result.stderr[-2000:], statuses)
