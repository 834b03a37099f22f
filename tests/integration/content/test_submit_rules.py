"""What POST /api/v1/content/generate accepts: each bad input is a 4xx naming the field and why, and leaves no
generation, outbox row, Idempotency-Key or event behind; defaults, the drawn seed, NFC text, configured bounds."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from contracts.events import AvatarCreated, GenerationRequested
from contracts.topology import GATEWAY_GENERATION_REQUESTED, Topology
from services.common.messaging.broker import Publisher
from services.common.persistence.db import create_engine
from services.common.storage.objects import ObjectStorage
from services.content.main import create_app
from services.content.models import Generation, IdempotencyKey, outbox_table
from services.content.settings import ContentSettings
from tests.support.auth import bearer, new_owner
from tests.support.content.client import publish, ready_avatar, submit, until
from tests.support.queues import drain_events
from tests.support.stack.service_fixtures import database_url, service_env, serving

GENERATE = "/api/v1/content/generate"


async def _rows(pg_url: URL) -> dict[str, int]:
    """How many generations, outbox rows and Idempotency-Keys content's database holds."""
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            return {
                name: int(await connection.scalar(select(func.count()).select_from(table)) or 0)
                for name, table in (
                    ("generations", Generation.__table__),
                    ("outbox", outbox_table),
                    ("idempotency_keys", IdempotencyKey.__table__),
                )
            }
    finally:
        await engine.dispose()


async def _stored_generation(pg_url: URL, generation_id: str) -> Generation:
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(select(Generation.__table__).where(Generation.id == uuid.UUID(generation_id)))
            ).one()
        return Generation(**row._mapping)
    finally:
        await engine.dispose()


def _fields(response: httpx.Response) -> dict[str, str]:
    return {f["field"]: f["reason"] for f in response.json()["details"]["fields"]}


# (what, body fields over a valid request, refused fields, a word every reason holds)
BAD_BODIES: list[tuple[str, dict[str, Any], set[str], str]] = [
    ("an unknown field", {"sampler": "euler"}, {"sampler"}, "not permitted"),
    ("an unknown nested-looking field", {"params": {"steps": 4}}, {"params"}, "not permitted"),
    ("cfg as a string", {"cfg": "0.5"}, {"cfg"}, "number"),
    ("width as a string", {"width": "512"}, {"width"}, "integer"),
    ("steps as a boolean", {"steps": True}, {"steps"}, "integer"),
    ("seed as a string", {"seed": "7"}, {"seed"}, "integer"),
    ("lora_scale as a string", {"lora_scale": "1"}, {"lora_scale"}, "number"),
    ("prompt as a number", {"prompt": 5}, {"prompt"}, "string"),
    ("steps 0", {"steps": 0}, {"steps"}, "greater than or equal to 1"),
    ("steps 101", {"steps": 101}, {"steps"}, "less than or equal to 100"),
    ("steps 4.5", {"steps": 4.5}, {"steps"}, "integer"),
    ("cfg 31", {"cfg": 31}, {"cfg"}, "less than or equal to 30"),
    ("cfg -1", {"cfg": -1}, {"cfg"}, "greater than or equal to 0"),
    ("lora_scale 2.5", {"lora_scale": 2.5}, {"lora_scale"}, "less than or equal to 2"),
    ("seed -1", {"seed": -1}, {"seed"}, "greater than or equal to 0"),
    ("seed 2**32", {"seed": 2**32}, {"seed"}, "less than or equal to 4294967295"),
    ("width 1001", {"width": 1001}, {"width"}, "multiple of 8"),
    ("width 8", {"width": 8}, {"width"}, "greater than or equal to 64"),
    ("height 4096", {"height": 4096}, {"height"}, "less than or equal to 2048"),
    ("2048×2048 at 100 steps", {"width": 2048, "height": 2048, "steps": 100}, {"width", "height", "steps"}, "budget"),
    ("a 10 kB prompt", {"prompt": "a" * 10_000}, {"prompt"}, "at most 2000"),
    ("a 10 kB negative prompt", {"negative_prompt": "a" * 10_000}, {"negative_prompt"}, "at most 2000"),
    ("NUL in the prompt", {"prompt": "a\x00b"}, {"prompt"}, "control character"),
    ("an escape in the prompt", {"prompt": "a\x1b[31mred"}, {"prompt"}, "control character"),
    ("a C1 control in the prompt", {"prompt": "a\x85b"}, {"prompt"}, "control character"),
    ("an escape in the negative prompt", {"negative_prompt": "\x1b"}, {"negative_prompt"}, "control character"),
    ("a blank prompt", {"prompt": "  \n "}, {"prompt"}, "blank"),
    ("no prompt", {"prompt": None}, {"prompt"}, ""),
    ("avatar_id not a uuid", {"avatar_id": "nope"}, {"avatar_id"}, "UUID"),
]


async def test_each_bad_request_is_refused_naming_its_field_and_leaves_nothing_behind(
    content: httpx.AsyncClient,
    publisher: Publisher,
    pg_url: URL,
    amqp: AbstractRobustConnection,
    topo: Topology,
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
    stranger_id = new_owner()
    foreign_avatar, _ = await ready_avatar(content, publisher, stranger_id, bearer(stranger_id))
    unready_avatar = str(uuid.uuid4())
    await publish(publisher, AvatarCreated(avatar_id=unready_avatar, owner_id=owner_id, name="Bare"), "identity")
    await until(content, f"/api/v1/content/avatars/{unready_avatar}", lambda body: body["ready"] is False, auth)
    valid = {"avatar_id": avatar_id, "prompt": "a portrait", "width": 512, "height": 512, "steps": 4}

    refusals: list[tuple[str, httpx.Response, int, set[str], str]] = []
    for what, fields, refused, word in BAD_BODIES:
        body = {k: v for k, v in (valid | fields).items() if v is not None}
        key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        refusals.append((what, await content.post(GENERATE, json=body, headers=auth | key), 422, refused, word))
    for what, avatar, status, word in (
        ("an avatar content never heard of", str(uuid.uuid4()), 404, "no such avatar"),
        ("someone else's avatar", foreign_avatar, 404, "no such avatar"),
        ("an avatar without a ready LoRA", unready_avatar, 409, "no ready LoRA"),
    ):
        response = await content.post(GENERATE, json=valid | {"avatar_id": avatar}, headers=auth)
        refusals.append((what, response, status, {"avatar_id"}, word))
    not_json = await content.post(
        GENERATE, content=b'{"avatar_id": ', headers=auth | {"content-type": "application/json"}
    )
    refusals.append(("a body that is not JSON", not_json, 422, {"body"}, "JSON"))
    not_utf8 = await content.post(GENERATE, content=b"\xff\xfe", headers=auth | {"content-type": "application/json"})
    refusals.append(("a body that is not UTF-8", not_utf8, 422, {"body"}, "JSON"))
    a_list = await content.post(GENERATE, json=[valid], headers=auth)
    refusals.append(("a JSON list", a_list, 422, {"body"}, ""))

    for what, response, status, refused, word in refusals:
        assert response.status_code == status, (what, response.text)
        fields = _fields(response)
        assert set(fields) == refused, (what, fields)
        assert all(word in reason for reason in fields.values()), (what, fields)
        assert response.json()["error_code"] == {404: "NOT_FOUND", 409: "CONFLICT", 422: "INVALID_REQUEST"}[status]

    no_token = await content.post(GENERATE, json=valid)
    assert no_token.status_code == 401 and no_token.json()["error_code"] == "UNAUTHORIZED"
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")

    assert await _rows(pg_url) == {"generations": 0, "outbox": 0, "idempotency_keys": 0}
    assert await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=0) == []

    # The same avatar and token do generate with the valid body: the refusals above were for their own reasons.
    await submit(content, auth, avatar_id)
    assert (await _rows(pg_url))["generations"] == 1


async def test_defaults_the_seed_is_drawn_and_recorded_the_scale_is_the_loras_and_text_is_nfc(
    content: httpx.AsyncClient, publisher: Publisher, pg_url: URL, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id)
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth, scale=0.7)

    drawn = await submit(content, auth, avatar_id, prompt="cafe\u0301 at night", negative_prompt="blu\u0308r")
    explicit = await submit(content, auth, avatar_id, seed=0, lora_scale=1.3, steps=4.0)

    assert 0 <= drawn["seed"] <= 2**32 - 1 and drawn["params"]["seed"] == drawn["seed"]
    assert drawn["params"]["lora_scale"] == 0.7
    assert (drawn["params"]["prompt"], drawn["params"]["negative_prompt"]) == ("caf\u00e9 at night", "bl\u00fcr")
    assert (explicit["seed"], explicit["params"]["lora_scale"], explicit["params"]["steps"]) == (0, 1.3, 4)

    stored = await _stored_generation(pg_url, drawn["id"])
    assert stored.seed == drawn["seed"] and stored.params["seed"] == drawn["seed"]
    assert stored.params["prompt"] == "caf\u00e9 at night" and stored.lora is not None and stored.lora["scale"] == 0.7
    events = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=2)
    requested = {payload.generation_id: payload for _, payload in events if isinstance(payload, GenerationRequested)}
    assert set(requested) == {drawn["id"], explicit["id"]}
    first, second = requested[drawn["id"]], requested[explicit["id"]]
    assert (first.params.seed, first.params.prompt, first.lora and first.lora.scale) == (
        drawn["seed"],
        "caf\u00e9 at night",
        0.7,
    )
    assert (second.params.seed, second.lora and second.lora.scale) == (0, 1.3)
    # The answer says what runs, and reading it again says the same.
    again = (await content.get(f"/api/v1/content/{drawn['id']}", headers=auth)).json()
    assert again["params"] == drawn["params"]


def _settings(
    rabbitmq_url: str, storage: ObjectStorage, topo: Topology, pg_url: URL, **overrides: Any
) -> ContentSettings:
    """content_settings with some settings (by environment name) changed, validated as at start."""
    return ContentSettings(
        **service_env(rabbitmq_url, storage, topo), CONTENT_DATABASE_URL=database_url(pg_url), **overrides
    )


async def test_configured_bounds_refuse_what_the_schema_allows_and_limits_reports_them(
    rabbitmq_url: str,
    storage: ObjectStorage,
    topo: Topology,
    pg_url: URL,
    publisher: Publisher,
    amqp: AbstractRobustConnection,
) -> None:
    settings = _settings(
        rabbitmq_url,
        storage,
        topo,
        pg_url,
        CONTENT_MAX_SIDE=1024,
        CONTENT_MAX_STEPS=40,
        CONTENT_MAX_PIXEL_STEPS=512 * 512 * 40,
        CONTENT_MAX_IN_FLIGHT=5,
        CONTENT_SUBMIT_BURST=7,
        CONTENT_SUBMIT_RATE_PER_MINUTE=12,
    )
    owner_id = new_owner()
    auth = bearer(owner_id)
    async with serving(create_app(settings), "http://content") as content:
        avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
        limits = await content.get("/api/v1/content/limits", headers=auth)
        too_wide = await content.post(
            GENERATE, json={"avatar_id": avatar_id, "prompt": "x", "width": 1536, "height": 512}, headers=auth
        )
        too_long = await content.post(GENERATE, json={"avatar_id": avatar_id, "prompt": "x", "steps": 41}, headers=auth)
        too_costly = await content.post(
            GENERATE, json={"avatar_id": avatar_id, "prompt": "x", "width": 1024, "height": 512, "steps": 40},
            headers=auth,
        )  # fmt: skip
        fits = await content.post(
            GENERATE, json={"avatar_id": avatar_id, "prompt": "x", "width": 1024, "height": 256, "steps": 40},
            headers=auth,
        )  # fmt: skip

    assert limits.status_code == 200
    assert limits.json() | {"max_wait_seconds": None} == {
        "min_side": 64,
        "max_side": 1024,
        "side_multiple_of": 8,
        "max_steps": 40,
        "max_pixel_steps": 512 * 512 * 40,
        "cfg_range": {"min": 0.0, "max": 30.0},
        "lora_scale_range": {"min": 0.0, "max": 2.0},
        "max_prompt_length": 2000,
        "max_in_flight": 5,
        "submit_rate_per_minute": 12.0,
        "submit_burst": 7,
        "max_wait_seconds": None,
    }
    assert (too_wide.status_code, _fields(too_wide)) == (422, {"width": "must be between 64 and 1024"})
    assert (too_long.status_code, _fields(too_long)) == (422, {"steps": "must be at most 40"})
    assert too_costly.status_code == 422 and set(_fields(too_costly)) == {"width", "height", "steps"}
    assert "budget" in _fields(too_costly)["steps"]
    assert fits.status_code == 202, fits.text
    assert await _rows(pg_url) == {"generations": 1, "outbox": 1, "idempotency_keys": 0}
    [(_, requested)] = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=1)
    assert isinstance(requested, GenerationRequested) and requested.generation_id == fits.json()["id"]


async def test_limits_needs_a_token_and_reports_the_defaults(content: httpx.AsyncClient) -> None:
    assert (await content.get("/api/v1/content/limits")).status_code == 401
    limits = (await content.get("/api/v1/content/limits", headers=bearer(new_owner()))).json()
    assert (limits["max_side"], limits["max_steps"], limits["max_pixel_steps"]) == (2048, 100, 1024 * 1024 * 50)
    assert limits["max_pixel_steps"] < 2048 * 2048 * 100  # the default refuses 2048² at 100 steps
