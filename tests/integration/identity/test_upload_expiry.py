"""Registrations expire: identity's retention loop marks the ones not completed in time expired and deletes every
upload object whose URL is dead, idempotently, retrying what storage refused, and never a file a ready version uses
(real PostgreSQL, RabbitMQ and S3)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.persistence.db import create_engine, create_session_factory
from services.common.persistence.migrations import downgrade, migrate_to_head
from services.common.persistence.sqltypes import UtcDateTime
from services.common.storage.objects import ObjectStorage
from services.identity.main import create_app
from services.identity.migrations import MIGRATIONS
from services.identity.settings import IdentitySettings
from services.identity.upload_expiry import SweepResult, UploadSweeper
from tests.support.auth import bearer, new_owner
from tests.support.identity.client import complete, register, upload_key_of, uploaded
from tests.support.lora_headers import lora_file
from tests.support.stack.service_fixtures import serving


class StorageDown:
    """Stands in for an S3 endpoint that is unreachable: the fault a real one cannot produce on demand."""

    def __init__(self) -> None:
        self.attempts = 0

    async def delete(self, key: str) -> None:
        self.attempts += 1
        raise ConnectionError(f"storage unreachable (deleting {key})")


async def lora(identity: httpx.AsyncClient, auth: dict[str, str], lora_id: str) -> dict[str, Any]:
    response = await identity.get(f"/api/v1/loras/{lora_id}", headers=auth)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_the_running_retention_loop_expires_what_was_not_completed_and_deletes_dead_uploads(
    identity_settings: IdentitySettings, storage: ObjectStorage
) -> None:
    settings = identity_settings.model_copy(
        update={"lora_upload_url_ttl_seconds": 2, "lora_registration_ttl_seconds": 2, "retention_interval_seconds": 1}
    )
    auth = bearer(new_owner())
    data = lora_file()
    async with serving(create_app(settings), "http://identity") as identity:
        ready = await uploaded(identity, auth, data)
        completed = await complete(identity, auth, ready["lora_id"])
        assert completed.status_code == 200, completed.text
        abandoned = await uploaded(identity, auth, lora_file(metadata={"n": "2"}), avatar_id=ready["avatar_id"])
        retired = await uploaded(identity, auth, lora_file(metadata={"n": "3"}), avatar_id=ready["avatar_id"])
        assert (await identity.post(f"/api/v1/loras/{retired['lora_id']}/retire", headers=auth)).status_code == 200
        never_put = await register(identity, auth, ready["avatar_id"], 1000)
        # A PUT to the ready version's old URL before it dies leaves an object nothing reads.
        await storage.put_bytes(upload_key_of(ready), b"written after complete")
        uploads = [upload_key_of(registration) for registration in (ready, abandoned, retired)]

        async with asyncio.timeout(20):
            while True:
                expired = (await lora(identity, auth, abandoned["lora_id"]))["status"] == "expired"
                if expired and not any([await storage.exists(key) for key in uploads]):
                    break
                await asyncio.sleep(0.1)

        assert (await lora(identity, auth, never_put["lora_id"]))["status"] == "expired"
        assert (await lora(identity, auth, retired["lora_id"]))["status"] == "retired"
        kept = await lora(identity, auth, ready["lora_id"])
        assert (kept["status"], kept["active"]) == ("ready", True)
        assert await storage.get_bytes(kept["object_key"]) == data
        late = await complete(identity, auth, abandoned["lora_id"])
        assert late.status_code == 409, late.text
        assert late.json()["details"]["reason_code"] == "REGISTRATION_EXPIRED"


async def test_a_sweep_while_storage_is_down_expires_the_rows_and_a_later_one_deletes_the_objects_once(
    identity: httpx.AsyncClient, identity_pg_url: URL, storage: ObjectStorage
) -> None:
    auth = bearer(new_owner())
    data = lora_file()
    ready = await uploaded(identity, auth, data)
    ready_view = (await complete(identity, auth, ready["lora_id"])).json()
    # The same file on a second avatar: one content-addressed object that two ready versions use.
    twin = await uploaded(identity, auth, data)
    assert (await complete(identity, auth, twin["lora_id"])).json()["object_key"] == ready_view["object_key"]
    abandoned = await uploaded(identity, auth, lora_file(metadata={"n": "2"}), avatar_id=ready["avatar_id"])
    # An admin import whose source object happens to lie under uploads/: it is left in place, as imports promise.
    source = f"uploads/imported/{uuid.uuid4()}.safetensors"
    await storage.put_bytes(source, lora_file(metadata={"n": "3"}))
    imported = await identity.post(
        "/api/v1/admin/loras/import",
        json={"avatar_id": ready["avatar_id"], "object_key": source, "activate": False},
        headers=bearer("ops", admin=True),
    )
    assert imported.status_code == 201, imported.text
    later = datetime.now(UTC) + timedelta(days=2)
    engine = create_engine(identity_pg_url)
    try:
        sessions = create_session_factory(engine)
        down = StorageDown()

        first = await UploadSweeper(sessions, down, clock=lambda: later).sweep()

        assert first == SweepResult(expired=1, uploads_deleted=0, storage_failed=True)
        assert down.attempts == 1  # the sweep stops at the first refusal instead of hammering a dead endpoint
        assert (await lora(identity, auth, abandoned["lora_id"]))["status"] == "expired"
        assert await storage.exists(upload_key_of(abandoned))

        second = await UploadSweeper(sessions, storage, clock=lambda: later).sweep()
        third = await UploadSweeper(sessions, storage, clock=lambda: later).sweep()
    finally:
        await engine.dispose()

    # The abandoned upload and the ready versions' (already deleted by complete: a delete of nothing is fine).
    assert second == SweepResult(expired=0, uploads_deleted=3)
    assert third == SweepResult(expired=0, uploads_deleted=0)
    assert not await storage.exists(upload_key_of(abandoned))
    assert await storage.get_bytes(ready_view["object_key"]) == data
    assert await storage.exists(source)
    assert await storage.exists(imported.json()["object_key"])
    for registration in (ready, twin):
        assert (await lora(identity, auth, registration["lora_id"]))["status"] == "ready"


# The columns of revision 0001 a row needs, typed (UUIDs and times are stored differently by each database).
_LORAS = sa.table(
    "identity_lora_models",
    sa.column("id", sa.Uuid()),
    sa.column("avatar_id", sa.Uuid()),
    sa.column("owner_id", sa.String()),
    sa.column("status", sa.String()),
    sa.column("upload_key", sa.String()),
    sa.column("base_model", sa.String()),
    sa.column("default_scale", sa.Float()),
    sa.column("trigger_words", sa.JSON()),
    sa.column("activate_when_ready", sa.Boolean()),
    sa.column("created_at", UtcDateTime()),
    sa.column("updated_at", UtcDateTime()),
)
_EXPIRES_AT = sa.column("expires_at", UtcDateTime())
_AVATARS = sa.table(
    "identity_avatars",
    sa.column("id", sa.Uuid()),
    sa.column("owner_id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("created_at", UtcDateTime()),
    sa.column("updated_at", UtcDateTime()),
)


async def test_registrations_made_before_expiry_existed_get_a_day_and_imports_none(empty_engine: AsyncEngine) -> None:
    await migrate_to_head(empty_engine, MIGRATIONS)
    await downgrade(empty_engine, MIGRATIONS, "0001")
    created = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    avatar_id, registered_id, imported_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    common: dict[str, Any] = {"avatar_id": avatar_id, "owner_id": "o", "base_model": "sdxl-base-1.0"}
    common |= {"default_scale": 1.0, "trigger_words": [], "activate_when_ready": True}
    common |= {"created_at": created, "updated_at": created}
    async with empty_engine.begin() as connection:
        await connection.execute(
            sa.insert(_AVATARS).values(id=avatar_id, owner_id="o", name="V", created_at=created, updated_at=created)
        )
        registered_key = f"uploads/loras/{avatar_id}/{registered_id}.safetensors"
        await connection.execute(
            sa.insert(_LORAS).values(id=registered_id, status="pending_upload", upload_key=registered_key, **common)
        )
        await connection.execute(
            sa.insert(_LORAS).values(id=imported_id, status="ready", upload_key="imports/source.safetensors", **common)
        )

    await migrate_to_head(empty_engine, MIGRATIONS)

    async with empty_engine.connect() as connection:
        query = sa.select(_LORAS.c.id, _EXPIRES_AT).select_from(_LORAS)
        expiry: dict[uuid.UUID, datetime | None] = dict((await connection.execute(query)).tuples().all())
    assert expiry == {registered_id: created + timedelta(days=1), imported_id: None}
