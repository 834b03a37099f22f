"""The committed Grafana dashboard reads only metrics the services declare, with well-formed queries."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "vixenbliss-generations.json"
METRIC = re.compile(r"\bvixen_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def declared_metric_names() -> set[str]:
    """Every `vixen_*` name written as a string in the services' code (counters, histograms, gauges)."""
    names: set[str] = set()
    for source in (ROOT / "services").rglob("*.py"):
        for literal in re.findall(r"\"(vixen_[a-z_]+)\"", source.read_text(encoding="utf-8")):
            names.add(base_name(literal))
    return names


def test_every_panel_queries_a_declared_metric_with_balanced_brackets() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    declared = declared_metric_names()
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]

    assert dashboard["uid"] and len(dashboard["panels"]) >= 10
    used = {base_name(name) for expr in expressions for name in METRIC.findall(expr)}
    assert used and used <= declared, sorted(used - declared)
    for expr in expressions:
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), expr
    # The seed's operating checklist: LORA_*, TIMEOUT and CUDA_OOM watched.
    assert any("LORA_.*|TIMEOUT|CUDA_OOM" in expr for expr in expressions)
