"""What a service's stderr would hold: the handler logsafe.logs.setup_logging installs, on a fresh stream.

Tests that say "no secret reaches the log" read this (what an operator would see) or pytest's caplog (what the
code logged, before any redaction); never a stream that another test's leftover handler may have rewritten.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from logsafe.logs import redacting_handler


@contextmanager
def service_log(
    secrets: Iterable[str], *, level: int = logging.INFO, json_lines: bool = False
) -> Iterator[io.StringIO]:
    """setup_logging's handler (format, redaction with `secrets`) on the root logger beside pytest's own handlers,
    writing to the stream yielded; removed afterwards, and the root level put back."""
    stream = io.StringIO()
    handler, _ = redacting_handler(stream, json_lines=json_lines, secrets=secrets)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    if saved > level:  # never raise it: caplog may have lowered it
        root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def written(secrets: Iterable[str], *lines: tuple[str, tuple[object, ...]]) -> str:
    """What the service's handler writes for each (format, args) logged at WARNING by a service logger."""
    with service_log(secrets) as stream:
        logger = logging.getLogger("services.tests.service_log")
        for message, args in lines:
            logger.warning(message, *args)
    return stream.getvalue()
