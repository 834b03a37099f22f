"""The worker's logs go through the services' redaction (logsafe.logs), with the worker's secrets.

The one import of `services` from gpu/: that module is the standard library only, and the Modal image ships it
(`add_local_python_source("logsafe.logs")`), so the worker and the services hide the same things.
"""

from __future__ import annotations

import logging
from typing import TextIO

from gpu.serve.settings import WorkerSettings
from logsafe.logs import Redaction, setup_logging

# httpx logs every request URL at INFO: for a presigned LoRA URL that is the signature. Never log it.
QUIET_LOGGERS = ("httpx", "httpcore")


def worker_secret_values(settings: WorkerSettings) -> list[str]:
    """Values the worker's log redaction must never let through."""
    return [settings.api_key.get_secret_value()] if settings.api_key is not None else []


def setup_worker_logging(
    settings: WorkerSettings | None = None, *, level: str | int = "INFO", stream: TextIO | None = None
) -> Redaction:
    """Root logger → one redacting handler on stderr (or `stream`), as the services have; returns its redaction."""
    redaction = setup_logging(level, secrets=worker_secret_values(settings or WorkerSettings()), stream=stream)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return redaction
