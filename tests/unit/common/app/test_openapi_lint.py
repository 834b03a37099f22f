"""Redocly's recommended rules (redocly.yaml) find nothing in the committed OpenAPI documents: no error and no warning
(an ambiguous pair of paths, a license without an identifier, an undeclared security scheme, …)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.node_tools import ROOT, run_node_tool

CONFIG = ROOT / "redocly.yaml"


@pytest.mark.parametrize("service", ["content", "identity"])
def test_the_document_passes_redocly_recommended_with_no_warning(service: str) -> None:
    document = Path("docs") / "openapi" / f"{service}.json"
    result = run_node_tool("redocly", "lint", "--config", str(CONFIG), "--format", "json", str(document))

    report = json.loads(result.stdout)
    problems = [
        f"{p['severity']} {p['ruleId']}: {p['message']} at {p['location'][0]['pointer']}" for p in report["problems"]
    ]
    assert problems == [], problems
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}
    assert result.returncode == 0, result.stderr[-2000:]
