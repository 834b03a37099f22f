"""Identity fuzzed from its own OpenAPI document by schemathesis, over a real socket, with no hook and no check
narrowed: never a 5xx, every answer as documented (status, body schema, headers), every malformed request refused,
every well-formed one accepted unless the API may rightly refuse it (404 for an id it never issued, 409, 429).
`make test` runs one seed with a few examples; `make api-fuzz` three seeds with 100 examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.lora_targets import KNOWN_BASE_MODELS
from services.identity.main import create_app
from services.identity.schemas import MAX_SINGLE_PUT_BYTES
from services.identity.settings import IdentitySettings
from tests.support.auth import bearer, new_owner
from tests.support.fuzzing import RUN_TIMEOUT_SECONDS, fuzz_seeds, run_schemathesis
from tests.support.stack.live_server import live_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 60)]


@pytest.fixture
def fuzz_settings(identity_settings: IdentitySettings) -> IdentitySettings:
    """A deployment as wide as the schema, so that what the schema allows is accepted: every base model the schema
    names, and files up to the schema's largest size (a narrower deployment answers 422 naming the field, as
    documented)."""
    return identity_settings.model_copy(
        update={"lora_base_models": KNOWN_BASE_MODELS, "lora_max_bytes": MAX_SINGLE_PUT_BYTES}
    )


@pytest.fixture
def live_identity(fuzz_settings: IdentitySettings) -> Iterator[str]:
    """Identity served by uvicorn (schemathesis runs in another process)."""
    with live_server(create_app(fuzz_settings), "identity-under-fuzz") as base_url:
        yield base_url


@pytest.mark.parametrize("seed", fuzz_seeds())
def test_identity_answers_every_generated_request_as_documented(live_identity: str, tmp_path: Path, seed: int) -> None:
    # An owner who is also an admin, so that the LoRA import is fuzzed past its 403 too.
    token = bearer(new_owner(), admin=True)["Authorization"]
    run = run_schemathesis("identity", live_identity, token, tmp_path, seed=seed)
    print(f"identity, seed {seed}:\n{run.summary()}")

    assert run.returncode == 0, run.output
    assert "No issues found" in run.output or " passed" in run.output, run.output
    statuses = run.statuses
    assert all(status < 500 for found in statuses.values() for status in found), statuses
    # Well-formed requests reached the use cases: avatars were created and listed, not all refused.
    assert 201 in statuses["POST /api/v1/avatars"], statuses
    assert 200 in statuses["GET /api/v1/avatars"], statuses
