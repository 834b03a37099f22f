"""Issue 20, quotas per owner: one owner cannot fill identity with avatars, open upload registrations or LoRA bytes,
not one request at a time, not by racing requests over two replicas; past a quota the answer is a 409 or 429 in the
uniform error shape with a stable reason code (real PostgreSQL, RabbitMQ and S3, the app in-process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from contracts.topology import Topology
from services.common.persistence.db import create_engine
from services.common.storage.objects import ObjectStorage
from services.identity.main import create_app
from services.identity.models import Avatar, LoraModel
from services.identity.settings import IdentitySettings
from tests.support.auth import bearer, new_owner
from tests.support.identity.client import complete, new_avatar, put_upload, register, uploaded
from tests.support.lora_headers import lora_file
from tests.support.stack.service_fixtures import TEST_LORA_MAX_BYTES, database_url, service_env, serving

MIB = 1024 * 1024
LORAS = "/api/v1/avatars/{}/loras"
SettingsWith = Callable[..., IdentitySettings]


@pytest.fixture
def settings_with(rabbitmq_url: str, storage: ObjectStorage, topo: Topology, identity_pg_url: URL) -> SettingsWith:
    """identity_settings with some settings (by environment name) changed, validated as at start."""

    def make(**overrides: Any) -> IdentitySettings:
        environment = {
            **service_env(rabbitmq_url, storage, topo),
            "IDENTITY_DATABASE_URL": database_url(identity_pg_url),
            "LORA_MAX_BYTES": TEST_LORA_MAX_BYTES,
        }
        return IdentitySettings(**{**environment, **overrides})

    return make


@contextlib.asynccontextmanager
async def two_replicas(settings: IdentitySettings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two identity apps (each its own engine, broker connection, relay and retention loop) on one database."""
    async with (
        serving(create_app(settings), "http://identity-a") as first,
        serving(create_app(settings), "http://identity-b") as second,
    ):
        yield first, second


def refused_as(response: httpx.Response, status: int, error_code: str, reason_code: str) -> dict[str, Any]:
    """Check a refusal in the uniform shape; its body."""
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert (body["error_code"], body["details"]["reason_code"]) == (error_code, reason_code), body
    assert body["error"], body
    return body


def retry_after(response: httpx.Response) -> int:
    value = response.headers["Retry-After"]
    assert value.isdigit(), value  # delta-seconds, not a date
    return int(value)


async def count_rows(pg_url: URL, model: type[Avatar] | type[LoraModel], owner_id: str) -> int:
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).where(model.owner_id == owner_id)) or 0)
    finally:
        await engine.dispose()


async def test_one_owner_cannot_create_150_avatars(identity: httpx.AsyncClient, identity_pg_url: URL) -> None:
    owner = new_owner()
    auth = bearer(owner)

    answers = [(await identity.post("/api/v1/avatars", json={"name": f"a{i}"}, headers=auth)) for i in range(150)]

    statuses = [response.status_code for response in answers]
    # The documented default: IDENTITY_MAX_AVATARS_PER_OWNER = 100.
    assert statuses == [201] * 100 + [409] * 50
    body = refused_as(answers[-1], 409, "CONFLICT", "TOO_MANY_AVATARS")
    assert "100" in body["error"]
    assert await count_rows(identity_pg_url, Avatar, owner) == 100
    # Another owner is not held back by this one, and a deleted avatar frees its place.
    await new_avatar(identity, bearer(new_owner()))
    deleted = await identity.delete(f"/api/v1/avatars/{answers[0].json()['id']}", headers=auth)
    assert deleted.status_code == 204
    await new_avatar(identity, auth)
    one_more = await identity.post("/api/v1/avatars", json={"name": "one more"}, headers=auth)
    refused_as(one_more, 409, "CONFLICT", "TOO_MANY_AVATARS")


async def test_registrations_at_the_largest_size_stop_at_the_open_upload_quota(
    settings_with: SettingsWith, identity_pg_url: URL
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    settings = settings_with(LORA_MAX_BYTES=512 * MIB)
    async with serving(create_app(settings), "http://identity") as identity:
        avatars = [(await new_avatar(identity, auth))["id"] for _ in range(3)]

        answers = [
            await identity.post(LORAS.format(avatars[i % 3]), json={"size_bytes": 512 * MIB}, headers=auth)
            for i in range(150)
        ]

    # The documented default: IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER = 5, over all the owner's avatars.
    assert [response.status_code for response in answers] == [201] * 5 + [429] * 145
    refused = answers[5]
    refused_as(refused, 429, "RATE_LIMITED", "TOO_MANY_OPEN_UPLOADS")
    # Retry-After: when the first open registration expires (LORA_REGISTRATION_TTL_SECONDS, 3600 by default).
    assert 3500 < retry_after(refused) <= 3600
    assert "upload_url" not in refused.text
    assert await count_rows(identity_pg_url, LoraModel, owner) == 5


async def test_the_byte_quota_counts_declared_sizes_of_open_registrations_and_frees_what_retires(
    settings_with: SettingsWith,
) -> None:
    auth = bearer(new_owner())
    # 20 open registrations at 512 MiB would be 10 GiB: the byte quota, not the open-upload one, refuses the 21st.
    settings = settings_with(LORA_MAX_BYTES=512 * MIB, IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER=100)
    async with serving(create_app(settings), "http://identity") as identity:
        avatar = (await new_avatar(identity, auth))["id"]

        answers = [
            await identity.post(LORAS.format(avatar), json={"size_bytes": 512 * MIB}, headers=auth) for _ in range(30)
        ]

        assert [response.status_code for response in answers] == [201] * 20 + [409] * 10
        body = refused_as(answers[20], 409, "CONFLICT", "LORA_BYTES_QUOTA_EXCEEDED")
        assert [field["field"] for field in body["details"]["fields"]] == ["size_bytes"]
        # What is left still fits: nothing (10 GiB taken); one byte is refused too.
        refused_as(
            await identity.post(LORAS.format(avatar), json={"size_bytes": 1}, headers=auth),
            409,
            "CONFLICT",
            "LORA_BYTES_QUOTA_EXCEEDED",
        )
        # Retiring an open registration gives its declared bytes back.
        retired = await identity.post(f"/api/v1/loras/{answers[0].json()['lora_id']}/retire", headers=auth)
        assert retired.status_code == 200, retired.text
        again = await identity.post(LORAS.format(avatar), json={"size_bytes": 512 * MIB}, headers=auth)
        assert again.status_code == 201, again.text


async def test_ready_versions_count_until_retired_and_completing_frees_an_open_upload(
    settings_with: SettingsWith,
) -> None:
    auth = bearer(new_owner())
    first_file, second_file = lora_file(metadata={"n": "1"}), lora_file(metadata={"n": "2"})
    size = len(first_file)
    settings = settings_with(
        IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER=1, IDENTITY_MAX_LORA_BYTES_PER_OWNER=2 * size + size // 2
    )
    async with serving(create_app(settings), "http://identity") as identity:
        first = await uploaded(identity, auth, first_file)
        avatar = first["avatar_id"]
        # One open registration is the most: a second one waits for the first to be completed.
        refused_as(
            await identity.post(LORAS.format(avatar), json={"size_bytes": size}, headers=auth),
            429,
            "RATE_LIMITED",
            "TOO_MANY_OPEN_UPLOADS",
        )
        assert (await complete(identity, auth, first["lora_id"])).status_code == 200
        second = await register(identity, auth, avatar, len(second_file))
        await put_upload(second["upload_url"], second_file)
        assert (await complete(identity, auth, second["lora_id"])).status_code == 200

        # Two ready files hold 2 × size; half a file more is left.
        refused_as(
            await identity.post(LORAS.format(avatar), json={"size_bytes": size}, headers=auth),
            409,
            "CONFLICT",
            "LORA_BYTES_QUOTA_EXCEEDED",
        )
        assert (await identity.post(f"/api/v1/loras/{first['lora_id']}/retire", headers=auth)).status_code == 200
        assert (await identity.post(LORAS.format(avatar), json={"size_bytes": size}, headers=auth)).status_code == 201


async def test_concurrent_registrations_over_two_replicas_cannot_race_past_the_open_upload_quota(
    settings_with: SettingsWith, identity_pg_url: URL
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    async with two_replicas(settings_with(IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER=3)) as replicas:
        avatar = (await new_avatar(replicas[0], auth))["id"]

        answers = await asyncio.gather(
            *(replicas[i % 2].post(LORAS.format(avatar), json={"size_bytes": 1000}, headers=auth) for i in range(24))
        )

    statuses = sorted(response.status_code for response in answers)
    assert statuses == [201] * 3 + [429] * 21, statuses
    assert await count_rows(identity_pg_url, LoraModel, owner) == 3


async def test_concurrent_registrations_cannot_race_past_the_byte_quota(
    settings_with: SettingsWith, identity_pg_url: URL
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    settings = settings_with(IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER=100, IDENTITY_MAX_LORA_BYTES_PER_OWNER=4 * 100_000)
    async with two_replicas(settings) as replicas:
        avatar = (await new_avatar(replicas[0], auth))["id"]

        answers = await asyncio.gather(
            *(replicas[i % 2].post(LORAS.format(avatar), json={"size_bytes": 100_000}, headers=auth) for i in range(20))
        )

    statuses = sorted(response.status_code for response in answers)
    assert statuses == [201] * 4 + [409] * 16, statuses
    assert await count_rows(identity_pg_url, LoraModel, owner) == 4


async def test_concurrent_avatar_creates_over_two_replicas_cannot_race_past_the_avatar_quota(
    settings_with: SettingsWith, identity_pg_url: URL
) -> None:
    owner = new_owner()
    auth = bearer(owner)
    async with two_replicas(settings_with(IDENTITY_MAX_AVATARS_PER_OWNER=5)) as replicas:
        answers = await asyncio.gather(
            *(replicas[i % 2].post("/api/v1/avatars", json={"name": f"a{i}"}, headers=auth) for i in range(24))
        )

    statuses = sorted(response.status_code for response in answers)
    assert statuses == [201] * 5 + [409] * 19, statuses
    assert await count_rows(identity_pg_url, Avatar, owner) == 5


async def test_an_expired_registration_can_no_longer_be_completed_and_frees_its_place(
    settings_with: SettingsWith,
) -> None:
    auth = bearer(new_owner())
    # The retention loop is kept from running during the test: the expiry holds by itself.
    settings = settings_with(
        LORA_UPLOAD_URL_TTL_SECONDS=1,
        LORA_REGISTRATION_TTL_SECONDS=1,
        IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER=1,
        RETENTION_INTERVAL_SECONDS=3600,
    )
    data = lora_file()
    async with serving(create_app(settings), "http://identity") as identity:
        registration = await uploaded(identity, auth, data)
        lora_path = f"/api/v1/loras/{registration['lora_id']}"
        expires_at = datetime.fromisoformat((await identity.get(lora_path, headers=auth)).json()["expires_at"])
        # Until the registration's expiry, as the service states it (a second at most).
        await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.01)

        late = await complete(identity, auth, registration["lora_id"])
        again = await identity.post(LORAS.format(registration["avatar_id"]), json={"size_bytes": 10}, headers=auth)

    refused_as(late, 409, "CONFLICT", "REGISTRATION_EXPIRED")
    assert again.status_code == 201, again.text
