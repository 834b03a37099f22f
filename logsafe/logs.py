"""Logging setup (plain or JSON lines) whose output never carries secrets, tokens or URL signatures."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

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
    # Every AWS SigV4 query parameter, and query parameters that carry a token or a signature (`?access_token=`
    # is refused by the API, yet a client that sends one must not leave it in the access log).
    (re.compile(r"\b(X-Amz-[A-Za-z-]+)=[^&\s\"'<>#]+", re.I), r"\1=" + REDACTED),
    (
        re.compile(
            r"(?<=[?&;])(access_token|id_token|refresh_token|token|signature|sig|api_key|apikey|client_secret|code)"
            r"=[^&\s\"'<>#]+",
            re.I,
        ),
        r"\1=" + REDACTED,
    ),
    # Anything shaped like a JWT (a JWS or a JWE: its header is base64url JSON, so it starts with "eyJ").
    (re.compile(r"\beyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){2,4}"), REDACTED),
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


class Redaction:
    """The secrets to hide, and the one function that hides them (and tokens, signatures) in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: list[str] = [s for s in secrets if s]

    def add_secret(self, value: str) -> None:
        """Redact one more value from now on."""
        if value:
            self.secrets.append(value)

    def __call__(self, text: str) -> str:
        return redact(text, self.secrets)


def _message_of(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not lose the record
        return f"{record.msg!r} {record.args!r}"


class RedactingFormatter(logging.Formatter):
    """A plain formatter whose output (message, traceback, stack) went through `redaction`.

    The record itself is left as it was: redaction happens in this handler's output only, so one handler
    (one left on the root logger, say) never changes what another handler or pytest's caplog sees.
    """

    def __init__(self, redaction: Redaction, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.redaction = redaction

    def format(self, record: logging.LogRecord) -> str:
        # A copy: Formatter.format caches the traceback text on the record it formats.
        copy = logging.makeLogRecord(record.__dict__)
        copy.msg, copy.args = _message_of(record), None
        return self.redaction(super().format(copy))


# The generation a task is working on (a consumed event's subject, a gateway job): JSON lines name it.
_generation_id: ContextVar[str | None] = ContextVar("vixen_generation_id", default=None)


@contextmanager
def generation_context(generation_id: str | None) -> Iterator[None]:
    """Lines logged inside (by this task and the tasks it starts) carry `generation_id`."""
    token = _generation_id.set(generation_id)
    try:
        yield
    finally:
        _generation_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, the generation being worked on and the
    trace and span ids of the span the line was logged in (to find its trace), and the exception when there is one.

    With a `redaction`, the message and the exception are redacted before they are encoded (so that a
    secret is matched as written, not as JSON escapes it); the record is left as it was.
    """

    def __init__(self, redaction: Redaction | None = None, service: str | None = None) -> None:
        super().__init__()
        self.redaction = redaction or Redaction()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redaction(_message_of(record)),
        }
        if self.service:
            entry["service"] = self.service
        generation_id = _generation_id.get()
        if generation_id:
            entry["generation_id"] = generation_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.redaction(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redaction(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redaction(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


NOISY_SIGNING_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore")


def redacting_handler(
    stream: TextIO | None = None, *, json_lines: bool = False, secrets: Iterable[str] = (), service: str | None = None
) -> tuple[logging.StreamHandler[TextIO], Redaction]:
    """The handler `setup_logging` installs (stderr unless `stream`), and its redaction (to add secrets)."""
    redaction = Redaction(secrets)
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = JsonFormatter(redaction, service) if json_lines else RedactingFormatter(redaction, PLAIN_FORMAT)
    handler.setFormatter(formatter)
    return handler, redaction


def setup_logging(
    level: str | int = "INFO",
    *,
    json_lines: bool = False,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    service: str | None = None,
) -> Redaction:
    """Configure the root logger to write redacted lines to stderr (or `stream`); returns the redaction. JSON
    lines name `service`."""
    # The redaction is in the handler's formatter: it covers records propagated from every child logger.
    handler, redaction = redacting_handler(stream, json_lines=json_lines, secrets=secrets, service=service)
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
