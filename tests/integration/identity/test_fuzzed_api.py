"""Identity fuzzed from its own OpenAPI document by schemathesis, over a real socket: never a 5xx, every answer as
documented (status, body schema, headers), every malformed request refused, every well-formed one accepted unless
the API may rightly refuse it (404 for an id it never issued, 409)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.identity.main import create_app
from services.identity.settings import IdentitySettings
from tests.support.auth import bearer, new_owner
from tests.support.fuzzing import run_schemathesis
from tests.support.identity.fuzz_hooks import BASE_MODEL_ENV, CONFIG, MAX_LORA_BYTES_ENV
from tests.support.stack.live_server import live_server

pytestmark = pytest.mark.slow


@pytest.fixture
def live_identity(identity_settings: IdentitySettings) -> Iterator[str]:
    """Identity served by uvicorn (schemathesis runs in another process)."""
    with live_server(create_app(identity_settings), "identity-under-fuzz") as base_url:
        yield base_url


def test_identity_answers_every_generated_request_as_documented(
    live_identity: str, identity_settings: IdentitySettings, tmp_path: Path
) -> None:
    # An owner who is also an admin, so that the LoRA import is fuzzed past its 403 too.
    token = bearer(new_owner(), admin=True)["Authorization"]
    run = run_schemathesis(
        "identity",
        live_identity,
        token,
        tmp_path,
        hooks="tests.support.identity.fuzz_hooks",
        env={
            BASE_MODEL_ENV: identity_settings.lora_base_models[0],
            MAX_LORA_BYTES_ENV: str(identity_settings.lora_max_bytes),
        },
        config=CONFIG,
    )

    assert run.returncode == 0, run.output
    assert "No issues found" in run.output or " passed" in run.output, run.output
    statuses = run.statuses
    assert all(status < 500 for found in statuses.values() for status in found), statuses
    # Well-formed requests reached the use cases: avatars were created and listed, not all refused.
    assert 201 in statuses["POST /api/v1/avatars"], statuses
    assert 200 in statuses["GET /api/v1/avatars"], statuses
