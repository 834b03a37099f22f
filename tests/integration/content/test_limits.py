"""Per-owner limits on submits hold across replicas: two content apps on one PostgreSQL database, concurrent
submits split between them, never more in flight than the cap and never more than the token bucket allows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
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
from services.common.storage.objects import ObjectStorage
from services.content.main import create_app
from services.content.models import Generation
from services.content.settings import ContentSettings
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, completed, publish, ready_avatar, until
from tests.support.queues import drain_events
from tests.support.stack.service_fixtures import database_url, service_env, serving

GENERATE = "/api/v1/content/generate"
SettingsWith = Callable[..., ContentSettings]


@pytest.fixture
def settings_with(rabbitmq_url: str, storage: ObjectStorage, topo: Topology, pg_url: URL) -> SettingsWith:
    """content_settings with some settings (by environment name) changed, validated as at start."""

    def make(**overrides: Any) -> ContentSettings:
        return ContentSettings(
            **service_env(rabbitmq_url, storage, topo), CONTENT_DATABASE_URL=database_url(pg_url), **overrides
        )

    return make


@contextlib.asynccontextmanager
async def two_replicas(settings: ContentSettings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two content apps (each its own engine, broker connection, relay and consumers) on one database."""
    async with (
        serving(create_app(settings), "http://content-a") as first,
        serving(create_app(settings), "http://content-b") as second,
    ):
        yield first, second


async def _submit_everywhere(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], auth: dict[str, str], avatar_id: str, count: int
) -> list[httpx.Response]:
    """`count` submits at once, alternating between the replicas."""
    body = {"avatar_id": avatar_id, "prompt": "a portrait", "width": 512, "height": 512, "steps": 4}
    return list(await asyncio.gather(*(replicas[i % 2].post(GENERATE, json=body, headers=auth) for i in range(count))))


async def _open_generations(pg_url: URL, owner_id: str) -> int:
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            query = select(func.count()).where(
                Generation.owner_id == owner_id, Generation.status.in_(("queued", "running"))
            )
            return int(await connection.scalar(query) or 0)
    finally:
        await engine.dispose()


def _refused_as(response: httpx.Response, reason_code: str) -> int:
    """Check a 429 of the given reason; its Retry-After in seconds."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert (body["error_code"], body["details"]["reason_code"]) == ("RATE_LIMITED", reason_code)
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after  # delta-seconds, not a date
    return int(retry_after)


async def test_the_in_flight_cap_holds_across_two_replicas_and_a_finished_generation_frees_a_slot(
    settings_with: SettingsWith,
    publisher: Publisher,
    pg_url: URL,
    amqp: AbstractRobustConnection,
    topo: Topology,
) -> None:
    settings = settings_with(CONTENT_MAX_IN_FLIGHT=3, CONTENT_SUBMIT_BURST=100, CONTENT_SUBMIT_RATE_PER_MINUTE=600)
    owner_id = new_owner()
    auth = bearer(owner_id)
    async with two_replicas(settings) as replicas:
        avatar_id, _ = await ready_avatar(replicas[0], publisher, owner_id, auth)

        responses = await _submit_everywhere(replicas, auth, avatar_id, 12)

        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        assert len(accepted) == 3, [r.status_code for r in responses]
        for refused in (r for r in responses if r.status_code != 202):
            assert 1 <= _refused_as(refused, "TOO_MANY_IN_FLIGHT") <= 60
        assert await _open_generations(pg_url, owner_id) == 3
        queue = topo.queue(GATEWAY_GENERATION_REQUESTED).name
        events = await drain_events(amqp, queue, expect=3)
        assert sorted(p.generation_id for _, p in events if isinstance(p, GenerationRequested)) == sorted(accepted)

        # Another owner has slots of their own.
        other_id = new_owner()
        other = bearer(other_id)
        other_avatar, _ = await ready_avatar(replicas[1], publisher, other_id, other)
        assert [r.status_code for r in await _submit_everywhere(replicas, other, other_avatar, 1)] == [202]

        # One finishes: exactly one slot frees up, on either replica.
        await publish(publisher, completed(accepted[0]), GATEWAY)
        await until(replicas[1], f"/api/v1/content/{accepted[0]}", lambda body: body["status"] == "completed", auth)
        again = await _submit_everywhere(replicas, auth, avatar_id, 4)
        assert sorted(r.status_code for r in again) == [202, 429, 429, 429]
        assert await _open_generations(pg_url, owner_id) == 3
        assert len(await drain_events(amqp, queue, expect=2)) == 2  # the other owner's and the freed slot's


async def test_the_submit_rate_holds_across_two_replicas(
    settings_with: SettingsWith,
    publisher: Publisher,
    pg_url: URL,
    amqp: AbstractRobustConnection,
    topo: Topology,
) -> None:
    settings = settings_with(CONTENT_SUBMIT_BURST=4, CONTENT_SUBMIT_RATE_PER_MINUTE=1, CONTENT_MAX_IN_FLIGHT=100)
    owner_id = new_owner()
    auth = bearer(owner_id)
    async with two_replicas(settings) as replicas:
        avatar_id, _ = await ready_avatar(replicas[0], publisher, owner_id, auth)

        responses = await _submit_everywhere(replicas, auth, avatar_id, 10)

        assert sorted(r.status_code for r in responses) == [202] * 4 + [429] * 6
        # One token a minute: the next one is most of a minute away.
        waits = [_refused_as(r, "SUBMIT_RATE_LIMITED") for r in responses if r.status_code == 429]
        assert all(30 <= wait <= 60 for wait in waits), waits
        assert await _open_generations(pg_url, owner_id) == 4
        events = await drain_events(amqp, topo.queue(GATEWAY_GENERATION_REQUESTED).name, expect=4)
        assert len(events) == 4

        # A finished generation gives no token back: still refused, on both replicas.
        generation_id = next(r.json()["id"] for r in responses if r.status_code == 202)
        await publish(publisher, completed(generation_id), GATEWAY)
        await until(replicas[0], f"/api/v1/content/{generation_id}", lambda body: body["status"] == "completed", auth)
        for replica in replicas:
            [later] = await _submit_everywhere((replica, replica), auth, avatar_id, 1)
            _refused_as(later, "SUBMIT_RATE_LIMITED")
        # The bucket is the owner's: another owner submits.
        other_id = new_owner()
        other = bearer(other_id)
        other_avatar, _ = await ready_avatar(replicas[1], publisher, other_id, other)
        assert [r.status_code for r in await _submit_everywhere(replicas, other, other_avatar, 1)] == [202]
