"""Logging setup (plain or JSON lines) with a filter that redacts secrets, tokens and URL signatures."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

REDACTED = "[REDACTED]"
# Shorter configured values are not redacted: replacing "a" everywhere would mangle every line.
MIN_SECRET_LENGTH = 4

# Query parameters that make a presigned URL usable by whoever reads it.
_SIGNED_QUERY = r"(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId|sig)="
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # The whole query string of a presigned URL (it is the credential).
    (
        re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s\"'<>]*?" + _SIGNED_QUERY + r"[^\s\"'<>]*", re.I),
        r"\1?" + REDACTED,
    ),
    # Signature parameters outside a URL (e.g. a query string logged alone).
    (
        re.compile(
            r"\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=[^&\s\"'<>]+",
            re.I,
        ),
        r"\1=" + REDACTED,
    ),
    # Credential headers, as "Name: value", "name=value" or "'name': 'value'".
    (
        re.compile(
            r"\b(authorization|proxy-authorization|modal-secret|modal-key|x-api-key)(['\"]?\s*[:=]\s*['\"]?)"
            r"(?:(?:bearer|basic|token)\s+)?[^\s'\",;}]+",
            re.I,
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]+", re.I), r"\1 " + REDACTED),
    # Passwords in connection URLs (amqp://user:password@host, postgresql://user:password@host).
    (re.compile(r"([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@", re.I), r"\1" + REDACTED + "@"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with configured secret values, tokens and presigned-URL signatures replaced."""
    for secret in sorted((s for s in secrets if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactionFilter(logging.Filter):
    """Rewrites each record's message (args merged in) and exception text through `redact`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = [s for s in secrets if s]

    def add_secret(self, value: str) -> None:
        """Redact one more value from now on."""
        if value:
            self.secrets.append(value)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info:
            # Format the traceback now so that secrets in exception messages are redacted too.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, self.secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


NOISY_SIGNING_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore")


def setup_logging(
    level: str | int = "INFO", *, json_lines: bool = False, secrets: Iterable[str] = ()
) -> RedactionFilter:
    """Configure the root logger to write redacted lines to stderr; returns the filter (to add secrets)."""
    redaction = RedactionFilter(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(PLAIN_FORMAT))
    # On the handler, not a logger: logger filters do not see records propagated from child loggers.
    handler.addFilter(redaction)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # At DEBUG, botocore logs the request signature on a line of its own and urllib3 logs full URLs with
    # their query: no pattern can tell those lines apart from harmless ones, so they never go below INFO.
    for chatty in NOISY_SIGNING_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger(chatty).getEffectiveLevel()))
    return redaction
