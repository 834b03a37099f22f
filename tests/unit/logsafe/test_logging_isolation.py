"""tests/conftest.py puts the logging configuration back after each test: what one test installs on the root
logger (as setup_logging does) is gone in the next. The second test reads what the first left; run alone, it
checks only that no such handler is there."""

from __future__ import annotations

import io
import logging

from logsafe.logs import setup_logging

MARK = "left-by-test-isolation"


def test_1_a_test_installs_a_root_handler_and_changes_levels() -> None:
    setup_logging("ERROR", stream=io.StringIO())
    logging.getLogger().handlers[0].set_name(MARK)
    logging.getLogger("services").setLevel(logging.CRITICAL)


def test_2_the_next_test_finds_none_of_it() -> None:
    root = logging.getLogger()
    assert MARK not in [handler.get_name() for handler in root.handlers]
    assert root.level != logging.ERROR
    assert logging.getLogger("services").level == logging.NOTSET
