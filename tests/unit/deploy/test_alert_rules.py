"""The shipped alert rules: promtool checks them and their unit tests (deploy/prometheus/alerts.test.yml), every
alert fires in some unit test, and every alert has its runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool") or str(ROOT / ".cache" / "bin" / "promtool")
    if not Path(found).is_file():
        pytest.skip("no promtool (scripts/ensure-promtool.sh installs Debian's where apt-get is usable)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False)


def alert_names() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_finds_the_rules_and_the_config_valid() -> None:
    checked = run("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = run("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert f"{len(alert_names())} rules found" in checked.stdout + checked.stderr


def test_every_alert_rule_unit_test_passes() -> None:
    tested = run("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_fires_in_a_unit_test_and_has_its_runbook_section() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text(encoding="utf-8"))
    fired = {
        case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    alerts_section = runbook.split("\n## Alerts\n", 1)[-1]
    sections = set(re.findall(r"^### (\w+)$", alerts_section, re.M))
    assert set(alert_names()) == fired
    assert set(alert_names()) <= sections
