"""Idempotency-Key on POST /api/v1/content/generate: a retry gets the same generation and no second event,
even when the retries race; keys are per owner; a reused key with another body and a malformed key are refused."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from contracts.events import GenerationRequested
from contracts.topology import GATEWAY_GENERATION_REQUESTED, Topology
from services.common.messaging.broker import Publisher
from services.common.persistence.db import create_engine
from services.content.models import Generation, IdempotencyKey, outbox_table
from tests.support.auth import bearer, new_owner
from tests.support.content.client import ready_avatar
from tests.support.queues import drain_events

GENERATE = "/api/v1/content/generate"


async def _counts(pg_url: URL) -> tuple[int, int, int]:
    """(generations, outbox rows, Idempotency-Keys) in content's database."""
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            found = [
                int(await connection.scalar(select(func.count()).select_from(table)) or 0)
                for table in (Generation.__table__, outbox_table, IdempotencyKey.__table__)
            ]
        return found[0], found[1], found[2]
    finally:
        await engine.dispose()


async def _requested_ids(amqp: AbstractRobustConnection, topo: Topology, expect: int) -> list[str]:
    """Generation ids of the generation.requested events on the gateway's queue (waits for `expect`, then a grace)."""
    events = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=expect)
    return [payload.generation_id for _, payload in events if isinstance(payload, GenerationRequested)]


def _body(avatar_id: str, **fields: Any) -> dict[str, Any]:
    return {"avatar_id": avatar_id, "prompt": "a portrait", "width": 512, "height": 512, "steps": 4, **fields}


async def test_a_retry_with_the_same_key_and_body_answers_the_same_generation_and_emits_once(
    content: httpx.AsyncClient, publisher: Publisher, pg_url: URL, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id) | {"Idempotency-Key": "order-42"}
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)

    first = await content.post(GENERATE, json=_body(avatar_id), headers=auth)
    # The same request written differently (key order, defaults spelled out, 4.0 for 4) is the same request.
    spelled_out = {"seed": None, "lora_scale": None, "cfg": 5.5, "negative_prompt": "", "steps": 4.0}
    retried = await content.post(GENERATE, json=spelled_out | _body(avatar_id, steps=4.0), headers=auth)

    assert (first.status_code, retried.status_code) == (202, 202), retried.text
    assert "Idempotent-Replayed" not in first.headers
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["id"] == first.json()["id"]
    assert retried.json()["seed"] == first.json()["seed"]  # the seed drawn the first time, not a new one
    assert retried.headers["Location"] == first.headers["Location"]
    assert await _requested_ids(amqp, topo, expect=1) == [first.json()["id"]]
    assert await _counts(pg_url) == (1, 1, 1)


async def test_the_same_key_with_another_body_is_a_422_naming_the_key(
    content: httpx.AsyncClient, publisher: Publisher, pg_url: URL, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id) | {"Idempotency-Key": "order-43"}
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
    first = await content.post(GENERATE, json=_body(avatar_id), headers=auth)

    other = await content.post(GENERATE, json=_body(avatar_id, prompt="another portrait"), headers=auth)

    assert first.status_code == 202
    assert other.status_code == 422
    assert [f["field"] for f in other.json()["details"]["fields"]] == ["Idempotency-Key"]
    assert other.json()["details"]["fields"][0]["reason"]
    assert await _requested_ids(amqp, topo, expect=1) == [first.json()["id"]]
    assert await _counts(pg_url) == (1, 1, 1)
    # The key still answers its first request.
    replay = await content.post(GENERATE, json=_body(avatar_id), headers=auth)
    assert (replay.status_code, replay.json()["id"]) == (202, first.json()["id"])


async def test_concurrent_submits_with_one_key_make_one_generation_and_one_event(
    content: httpx.AsyncClient, publisher: Publisher, pg_url: URL, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner_id = new_owner()
    auth = bearer(owner_id) | {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
    # An earlier submit (another key): the owner's quota row exists, so only its lock orders the racers below.
    earlier = await content.post(GENERATE, json=_body(avatar_id), headers=auth | {"Idempotency-Key": "earlier"})
    assert earlier.status_code == 202, earlier.text

    responses = await asyncio.gather(*(content.post(GENERATE, json=_body(avatar_id), headers=auth) for _ in range(6)))

    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in responses) == [""] + ["true"] * 5
    raced = responses[0].json()["id"]
    assert sorted(await _requested_ids(amqp, topo, expect=2)) == sorted([earlier.json()["id"], raced])
    assert await _counts(pg_url) == (2, 2, 2)


async def test_keys_are_per_owner_so_two_owners_with_one_key_get_two_generations(
    content: httpx.AsyncClient, publisher: Publisher, pg_url: URL, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    key = {"Idempotency-Key": "shared-key-1"}
    generations = []
    for _ in range(2):
        owner_id = new_owner()
        auth = bearer(owner_id) | key
        avatar_id, _ = await ready_avatar(content, publisher, owner_id, auth)
        response = await content.post(GENERATE, json=_body(avatar_id), headers=auth)
        assert response.status_code == 202 and "Idempotent-Replayed" not in response.headers, response.text
        generations.append(response.json()["id"])

    assert len(set(generations)) == 2
    assert sorted(await _requested_ids(amqp, topo, expect=2)) == sorted(generations)
    assert await _counts(pg_url) == (2, 2, 2)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a\x01b", id="a control character"),
        pytest.param("a\tb", id="a tab"),
        pytest.param("two words", id="a space"),
        pytest.param("k" * 300, id="300 characters"),
        pytest.param("", id="empty"),
    ],
)
async def test_a_malformed_key_is_a_422_and_nothing_is_recorded(
    content: httpx.AsyncClient, pg_url: URL, key: str
) -> None:
    # The key is checked before anything else: an avatar content never heard of would otherwise be a 404.
    request = httpx.Request(
        "POST",
        f"http://content{GENERATE}",
        json=_body(str(uuid.uuid4())),
        headers=bearer(new_owner()),
    )
    request.headers["Idempotency-Key"] = key  # set after building: httpx checks nothing more then
    response = await content.send(request)

    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["Idempotency-Key"]
    assert await _counts(pg_url) == (0, 0, 0)
