"""Content fuzzed from its own OpenAPI document by schemathesis, over a real socket, with no check narrowed: never a
5xx, every answer as documented (status, body schema, content type, headers, the event stream's events), every
malformed request refused, every well-formed one accepted unless the API may rightly refuse it (404, 409, 429);
schema-valid submits for the caller's ready avatar are accepted. `make test` runs one seed with a few examples;
`make api-fuzz` three seeds with 100 examples per operation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema_rs
import pytest

from contracts.budget import WORKER_MAX_SIDE, WORKER_MAX_STEPS
from services.common.messaging.broker import Publisher
from services.content.main import create_app
from services.content.settings import ContentSettings
from tests.support.auth import bearer, new_owner
from tests.support.content.client import ready_avatar
from tests.support.content.fuzz_hooks import AVATAR_ID_ENV
from tests.support.fuzzing import RUN_TIMEOUT_SECONDS, fuzz_seeds, run_schemathesis
from tests.support.stack.live_server import live_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 60)]

LIMITS_PATH = "/api/v1/content/limits"


@pytest.fixture
def fuzz_settings(content_settings: ContentSettings) -> ContentSettings:
    """Admission as wide as the schema (so that what the schema allows is accepted), no limit the fuzzer's pace
    would reach, short waits (a generated `Prefer: wait=60` must not hold the run for a minute), short lives."""
    return content_settings.model_copy(
        update={
            "max_pixel_steps": WORKER_MAX_SIDE * WORKER_MAX_SIDE * WORKER_MAX_STEPS,
            "max_in_flight_per_owner": 10_000,
            "submit_burst": 10_000,
            "submit_rate_per_minute": 60_000.0,
            "max_wait_seconds": 1.0,
            # Every generation ends within a couple of seconds (the sweeper fails it): an event stream the stateful
            # phase opens on a generation it submitted ends then, instead of holding its request open.
            "generation_deadline_seconds": 1,
            "sweep_interval_seconds": 0.5,
            "sweep_grace_seconds": 0.0,
        }
    )


@pytest.fixture
def live_content(fuzz_settings: ContentSettings) -> Iterator[str]:
    """Content served by uvicorn (schemathesis runs in another process)."""
    with live_server(create_app(fuzz_settings), "content-under-fuzz") as base_url:
        yield base_url


@pytest.mark.parametrize("seed", fuzz_seeds())
async def test_content_answers_every_generated_request_as_documented(
    live_content: str, publisher: Publisher, tmp_path: Path, seed: int
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    async with httpx.AsyncClient(base_url=live_content, timeout=10) as client:
        avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
    # The committed document, every check but ignored_auth (auth is tested route by route elsewhere); the hooks
    # point a schema-valid submit at the ready avatar, read the event stream as the text its schema says, and add
    # a check of each event against the stream's description (the submit's links lead the stateful phase there).
    run = await asyncio.to_thread(
        run_schemathesis,
        "content",
        live_content,
        auth["Authorization"],
        tmp_path,
        seed=seed,
        hooks="tests.support.content.fuzz_hooks",
        env={AVATAR_ID_ENV: avatar_id},
    )
    print(f"content, seed {seed}:\n{run.summary()}")

    assert run.returncode == 0, run.output
    assert "No issues found" in run.output or " passed" in run.output, run.output
    statuses = run.statuses
    # The hook made the ready avatar reach the use case: some submits were accepted, not all refused.
    assert 202 in statuses["POST /api/v1/content/generate"], statuses
    assert all(status < 500 for found in statuses.values() for status in found), statuses
    assert 200 in statuses[f"GET {LIMITS_PATH}"], statuses
    # The submit's links led the stateful phase to real generations: streams the event check judged, and cancels.
    assert any(path.endswith("/events") and 200 in found for path, found in statuses.items()), statuses
    assert any(path.endswith("/cancel") and 200 in found for path, found in statuses.items()), statuses


async def test_the_limits_answer_as_documented(live_content: str) -> None:
    # The answer against the schema the served document gives it (the fuzzer checks it too, with random tokens).
    async with httpx.AsyncClient(base_url=live_content, timeout=10) as client:
        document = (await client.get("/openapi.json")).json()
        response = await client.get(LIMITS_PATH, headers=bearer(new_owner()))
        refused = await client.get(LIMITS_PATH)

    operation = document["paths"][LIMITS_PATH]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
    assert response.status_code == 200
    assert [error.message for error in validator.iter_errors(response.json())] == []
    assert response.json()["cfg_range"] == {"min": 0.0, "max": 30.0}
    assert refused.status_code == 401 and "401" in operation["responses"]
