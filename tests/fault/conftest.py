"""The fault table: every scenario of tests/fault/test_fault_suite.py adds its row; the run prints the table in
its summary (so CI's log keeps it) and writes it to FAULT_TABLE_FILE when that is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.support.stack.fault_stack import Row, render_table

FAULT_ROWS = pytest.StashKey[list[Row]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FAULT_ROWS] = []


@pytest.fixture(scope="session")
def fault_rows(request: pytest.FixtureRequest) -> list[Row]:
    """Where the scenarios' rows go (the run's, not a module's: printed once at the end)."""
    return request.config.stash[FAULT_ROWS]


def pytest_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_ROWS, [])
    if not rows:
        return
    lines = render_table(rows)
    terminalreporter.write_sep("=", "fault suite")
    for line in lines:
        terminalreporter.write_line(line)
    target = os.environ.get("FAULT_TABLE_FILE")
    if target:
        Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")
