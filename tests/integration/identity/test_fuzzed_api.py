"""Identity fuzzed from its own OpenAPI document by schemathesis, over a real socket: never a 5xx, every answer as
documented (status, body schema, headers), every malformed request refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from services.identity.main import create_app
from services.identity.settings import IdentitySettings
from tests.support.auth import bearer

pytestmark = pytest.mark.slow


@pytest.fixture
def live_identity(identity_settings: IdentitySettings) -> Iterator[str]:
    """Identity served by uvicorn on a free port in a thread of its own (its lifespan runs on that loop)."""
    config = uvicorn.Config(create_app(identity_settings), host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="identity-under-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("identity did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_identity_answers_every_generated_request_as_documented(live_identity: str, tmp_path: Path) -> None:
    token = bearer("fuzz-owner", admin=True)["Authorization"]
    # The CLI, not the pytest plugin: the plugin does not run under this pytest. Excluded, with reasons: a
    # schema-valid cursor or a well-formed id of nothing is rightly a 422 (the schema cannot say which strings this
    # API issued: positive_data_acceptance), and auth is fuzzed route by route in test_access (ignored_auth).
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{live_identity}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,ignored_auth",
            "--header",
            f"Authorization: {token}",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "NO_COLOR": "1"},
    )

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or " passed" in result.stdout, result.stdout[-3000:]
