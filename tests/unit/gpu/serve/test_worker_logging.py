"""The worker's logs go through the services' redaction, with WORKER_API_KEY among the secrets."""

from __future__ import annotations

import io
import logging

import pytest

from gpu.serve.log_setup import setup_worker_logging, worker_secret_values
from gpu.serve.settings import WorkerSettings
from logsafe.logs import REDACTED
from tests.support.settings_env import settings_env

KEY = "wk-local-key-7f3a9c"
PRESIGNED = "https://acc.r2.cloudflarestorage.com/loras/a.safetensors?X-Amz-Credential=AKIAX&X-Amz-Signature=feed42"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No WORKER_* or LORA_* variable of the developer's shell reaches WorkerSettings."""
    return settings_env(monkeypatch, WorkerSettings, {})


def test_the_worker_key_and_presigned_urls_never_reach_the_worker_log() -> None:
    stream = io.StringIO()
    setup_worker_logging(WorkerSettings(WORKER_API_KEY=KEY), stream=stream)  # type: ignore[call-arg]

    logging.getLogger("gpu.serve.server").warning("refused key %s", KEY)
    logging.getLogger("gpu.engine.lora.store").warning("download of %s failed", PRESIGNED)

    text = stream.getvalue()
    assert text.count("\n") == 2 and text.count(REDACTED) == 2
    assert KEY not in text and "feed42" not in text and "AKIAX" not in text
    assert "https://acc.r2.cloudflarestorage.com/loras/a.safetensors?" in text


def test_httpx_request_lines_stay_below_the_worker_log_level() -> None:
    setup_worker_logging(WorkerSettings(), stream=io.StringIO())

    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("gpu.engine.engine").isEnabledFor(logging.INFO)


def test_the_worker_secrets_are_its_key() -> None:
    assert worker_secret_values(WorkerSettings(WORKER_API_KEY=KEY)) == [KEY]  # type: ignore[call-arg]
    assert worker_secret_values(WorkerSettings()) == []
