"""Log redaction: secrets, bearer tokens, credential headers and presigned-URL signatures never reach a log."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from services.common.logging import REDACTED, JsonFormatter, RedactionFilter, redact, setup_logging

PRESIGNED = (
    "https://acc.r2.cloudflarestorage.com/loras/a1.safetensors?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fauto%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef0123456789abcdef"
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, RedactionFilter]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    redaction = RedactionFilter(["sk-live-very-secret-value"])
    handler.addFilter(redaction)
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, redaction
    logger.removeHandler(handler)


def test_presigned_url_loses_its_whole_query(captured: tuple[logging.Logger, io.StringIO, RedactionFilter]) -> None:
    logger, stream, _ = captured
    logger.info("calling worker with lora_url=%s", PRESIGNED)
    out = stream.getvalue()
    assert "X-Amz-Signature" not in out and "0123456789abcdef" not in out and "AKIAEXAMPLE" not in out
    assert "https://acc.r2.cloudflarestorage.com/loras/a1.safetensors?" + REDACTED in out


def test_configured_secret_in_args_and_exception(
    captured: tuple[logging.Logger, io.StringIO, RedactionFilter],
) -> None:
    logger, stream, redaction = captured
    logger.warning("key is %s", "sk-live-very-secret-value")
    redaction.add_secret("late-added-secret")
    try:
        raise RuntimeError("auth failed for late-added-secret")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert "sk-live-very-secret-value" not in out and "late-added-secret" not in out
    assert out.count(REDACTED) >= 2  # the message arg, the exception message (and its source line)
    assert "RuntimeError" in out  # the traceback itself is kept


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGci"),
        ('{"Modal-Secret": "wk-abcdef", "Modal-Key": "wk-key-1"}', "wk-abcdef"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("token Bearer abc.def-ghi", "abc.def-ghi"),
        ("amqp://vixen:hunter22@rabbit:5672/", "hunter22"),
        ("?X-Amz-Security-Token=FQoGZXIvYXdzE&x=1", "FQoGZXIvYXdzE"),
        ("http://127.0.0.1:9000/b/k?AWSAccessKeyId=AK&Signature=abc%3D&Expires=1", "abc%3D"),
    ],
)
def test_tokens_and_credentials_are_redacted(text: str, leak: str) -> None:
    assert leak not in redact(text)


def test_ordinary_text_and_urls_are_kept() -> None:
    text = "generation g1 completed in 1.2s: https://example.com/a?page=2"
    assert redact(text, ["x"]) == text  # too-short secrets are ignored


def test_setup_logging_json_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("INFO", json_lines=True, secrets=["topsecret-123"])
        logging.getLogger("svc").info("using %s at %s", "topsecret-123", PRESIGNED)
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
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
    import logging

    from services.common.logging import NOISY_SIGNING_LOGGERS, setup_logging

    setup_logging("DEBUG")
    try:
        for name in NOISY_SIGNING_LOGGERS:
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
        assert logging.getLogger("services").isEnabledFor(logging.DEBUG)
    finally:
        setup_logging("INFO")
