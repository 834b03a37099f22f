"""The AsyncAPI CLI (tools/node) validates docs/asyncapi.yaml with no problem at any severity, hints included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.node_tools import run_node_tool

# A line of the CLI's stylish report that names a problem: a severity heading or diagnostic, the summary
# ("✖ 1 problem (0 errors, 0 warnings, 1 info, 0 hints)"), or "is valid but has ... governance issues".
PROBLEM_LINE = re.compile(r"\b(errors?|warn(ings?)?|info(rmation)?|hints?|problems?|valid but)\b", re.IGNORECASE)

# What the CLI printed for the 3.0.0 document before this check existed (exit status 0 without --fail-severity).
OUTPUT_OF_THE_3_0_DOCUMENT = """
File docs/asyncapi.yaml is valid but has (itself and/or referenced documents) governance issues.
Information
docs/asyncapi.yaml
 2:11  information  asyncapi-latest-version  The latest version of AsyncAPi is not used. It is recommended update to \
the "3.1.0" version.  asyncapi

✖ 1 problem (0 errors, 0 warnings, 1 info, 0 hints)
"""


def problem_lines(output: str) -> list[str]:
    """The lines of the CLI's output that report a problem of any severity."""
    return [line.strip() for line in output.splitlines() if PROBLEM_LINE.search(line)]


def test_problem_lines_catch_an_information_diagnostic() -> None:
    assert problem_lines(OUTPUT_OF_THE_3_0_DOCUMENT) == [
        "File docs/asyncapi.yaml is valid but has (itself and/or referenced documents) governance issues.",
        "Information",
        "2:11  information  asyncapi-latest-version  The latest version of AsyncAPi is not used. It is recommended "
        'update to the "3.1.0" version.  asyncapi',
        "✖ 1 problem (0 errors, 0 warnings, 1 info, 0 hints)",
    ]
    assert (
        problem_lines(
            "File docs/asyncapi.yaml is valid! File docs/asyncapi.yaml and referenced documents don't "
            "have governance issues."
        )
        == []
    )


def test_the_asyncapi_cli_finds_no_problem_in_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Analytics off through a config file of its own (else the CLI writes one to $HOME and tries to reach the
    # internet); node-config's notes about the CLI's own missing config files are not the document's problems.
    analytics = tmp_path / "asyncapi-analytics.json"
    analytics.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "test"}))
    monkeypatch.setenv("ASYNCAPI_METRICS_CONFIG_PATH", str(analytics))
    monkeypatch.setenv("SUPPRESS_NO_CONFIG_WARNING", "1")
    monkeypatch.setenv("SUPPRESS_STRICTNESS_CHECK", "1")

    result = run_node_tool("asyncapi", "validate", "docs/asyncapi.yaml", "--fail-severity", "hint")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert problem_lines(output) == [], output
    assert "is valid" in output, output
