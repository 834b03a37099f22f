"""A logging handler that keeps what it is given, for tests that listen on a logger directly."""

from __future__ import annotations

import logging


class Records(logging.Handler):
    """Keeps the records it is given, untouched (as pytest's caplog does)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
