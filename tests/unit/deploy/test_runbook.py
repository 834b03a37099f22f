"""docs/runbook.md stays true: a row for every error code a generation can fail with, and only metrics the
services declare."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from tests.unit.deploy.test_grafana_dashboard import METRIC, base_name, declared_metric_names

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "runbook.md"


def test_every_error_code_has_its_row() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.M))
    assert rows == {code.value for code in (*WorkerErrorCode, *GatewayErrorCode)}


def test_every_metric_it_names_is_declared_by_a_service() -> None:
    named = {base_name(name) for name in METRIC.findall(RUNBOOK.read_text(encoding="utf-8"))}
    assert named and named <= declared_metric_names()
