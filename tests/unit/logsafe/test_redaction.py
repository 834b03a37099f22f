"""Log redaction: secrets, bearer tokens, credential headers and presigned-URL signatures never reach a log.

Each logging test reads what the handler `setup_logging` installs would write, on a stream of its own; no test
depends on (or leaves) a handler on the root logger (tests/conftest.py puts the logging configuration back).
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from logsafe.logs import (
    NOISY_SIGNING_LOGGERS,
    REDACTED,
    JsonFormatter,
    Redaction,
    redact,
    redacting_handler,
    setup_logging,
)
from tests.support.log_records import Records

PRESIGNED = (
    "https://acc.r2.cloudflarestorage.com/loras/a1.safetensors?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fauto%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef0123456789abcdef"
)
SECRET = "sk-live-very-secret-value"


@pytest.fixture(params=["plain", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO, Redaction]]:
    """A private logger writing through setup_logging's handler (plain or JSON lines) to a fresh stream."""
    stream = io.StringIO()
    handler, redaction = redacting_handler(stream, json_lines=request.param == "json", secrets=[SECRET])
    logger = logging.getLogger(f"tests.redaction.{request.param}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, redaction
    logger.removeHandler(handler)


def test_presigned_url_loses_its_whole_query(captured: tuple[logging.Logger, io.StringIO, Redaction]) -> None:
    logger, stream, _ = captured
    logger.info("calling worker with lora_url=%s", PRESIGNED)
    out = stream.getvalue()
    assert "X-Amz-Signature" not in out and "0123456789abcdef" not in out and "AKIAEXAMPLE" not in out
    assert "https://acc.r2.cloudflarestorage.com/loras/a1.safetensors?" + REDACTED in out


def test_configured_secret_in_args_exception_and_stack(
    captured: tuple[logging.Logger, io.StringIO, Redaction],
) -> None:
    logger, stream, redaction = captured
    logger.warning("key is %s", SECRET)
    redaction.add_secret("late-added-secret")
    try:
        raise RuntimeError("auth failed for late-added-secret")
    except RuntimeError:
        logger.exception("boom")
    logger.info("where %s was used", "late-added-secret", stack_info=True)
    out = stream.getvalue()
    assert out, "nothing was written"
    assert SECRET not in out and "late-added-secret" not in out
    assert out.count(REDACTED) >= 3  # the message arg, the exception message (and its source line), the stack
    assert "RuntimeError" in out  # the traceback itself is kept


def test_a_secret_that_json_would_escape_is_still_hidden() -> None:
    secret = 'pa"ss\\word-9'
    stream = io.StringIO()
    handler, _ = redacting_handler(stream, json_lines=True, secrets=[secret])
    handler.handle(logging.LogRecord("svc", logging.INFO, __file__, 1, "password %s", (secret,), None))
    line = stream.getvalue()
    assert json.loads(line)["message"] == f"password {REDACTED}"
    assert "ss\\\\word" not in line and "pa\\" not in line


def test_a_redacting_handler_leaves_the_record_to_the_other_handlers() -> None:
    """The redaction is in the handler's output only. A redacting handler on the root logger once rewrote each
    record in place, so pytest's caplog (and any other handler) saw a redacted record whatever the code logged."""
    stream = io.StringIO()
    redacting, _ = redacting_handler(stream, secrets=[SECRET])
    raw = Records()
    logger = logging.getLogger("tests.redaction.others")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in (redacting, raw):  # the redacting handler first, as a leftover root handler would be
        logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad key {SECRET}")
        except ValueError:
            logger.exception("using %s", SECRET)
    finally:
        for handler in (redacting, raw):
            logger.removeHandler(handler)
    assert SECRET not in stream.getvalue()
    (record,) = raw.records
    assert record.getMessage() == f"using {SECRET}"
    assert record.exc_info is not None and record.exc_text is None
    assert SECRET in logging.Formatter().format(record)


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGci"),
        ('{"Modal-Secret": "wk-abcdef", "Modal-Key": "wk-key-1"}', "wk-abcdef"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("token Bearer abc.def-ghi", "abc.def-ghi"),
        ("amqp://vixen:hunter22@rabbit:5672/", "hunter22"),
        ("postgresql+asyncpg://vb:s3cret-pw@db:5432/vixen", "s3cret-pw"),
        ("?X-Amz-Security-Token=FQoGZXIvYXdzE&x=1", "FQoGZXIvYXdzE"),
        ("http://127.0.0.1:9000/b/k?AWSAccessKeyId=AK&Signature=abc%3D&Expires=1", "abc%3D"),
        ('"GET /api/v1/content/g/events?access_token=eyJhbGciOiJIUzI1NiJ9.e30.c2ln HTTP/1.1" 401', "e30.c2ln"),
        ("/api/v1/content?cursor=x&token=opaque-token-1", "opaque-token-1"),
        ("/api/v1/content/g/events?expires=1&signature=c2lnbmVk", "c2lnbmVk"),
        ("/callback?code=oauth-code-1&state=s", "oauth-code-1"),
        ("X-Amz-Credential=AKIAEXAMPLE%2F2030 alone", "AKIAEXAMPLE"),
        ("a JWT under any name: ?q=eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0. seen", "eyJzdWIiOiJ4In0"),
        ("a JWE: eyJhbGciOiJSU0EifQ.a2V5.aXY.Y2lwaGVy.dGFn", "Y2lwaGVy"),
    ],
)
def test_tokens_and_credentials_are_redacted(text: str, leak: str) -> None:
    assert leak in text
    assert leak not in redact(text)


def test_ordinary_text_and_urls_are_kept() -> None:
    text = "generation g1 completed in 1.2s: https://example.com/a?page=2"
    assert redact(text, ["x"]) == text  # too-short secrets are ignored
    # Words that merely contain a parameter's name, or start like a JWT, are not touched.
    ordinary = "tokens=3 ?pagetoken=x eyJfoo is a word, /api/v1/content?limit=5&cursor=abc"
    assert redact(ordinary) == ordinary


def test_setup_logging_json_lines_are_redacted() -> None:
    stream = io.StringIO()
    setup_logging("INFO", json_lines=True, secrets=["topsecret-123"], stream=stream)
    logging.getLogger("svc").info("using %s at %s", "topsecret-123", PRESIGNED)
    (line,) = stream.getvalue().strip().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "svc"
    assert "topsecret-123" not in line and "X-Amz-Signature" not in line


def test_json_formatter_includes_exception() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info())
    assert "ValueError: bad" in json.loads(JsonFormatter().format(record))["exception"]


def test_debug_logging_never_lets_signing_libraries_below_info() -> None:
    setup_logging("DEBUG", stream=io.StringIO())
    for name in NOISY_SIGNING_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    assert logging.getLogger("services").isEnabledFor(logging.DEBUG)
