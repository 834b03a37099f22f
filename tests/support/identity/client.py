"""Calls of identity's API that many tests make: an avatar, a registered LoRA version, its upload."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from services.common.storage.objects import ObjectStorage
from services.identity.lora_files import upload_key


async def new_avatar(identity: httpx.AsyncClient, auth: dict[str, str], name: str = "Vixen") -> dict[str, Any]:
    """POST /api/v1/avatars; the created avatar."""
    response = await identity.post("/api/v1/avatars", json={"name": name}, headers=auth)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def register(
    identity: httpx.AsyncClient, auth: dict[str, str], avatar_id: str, size_bytes: int, **fields: Any
) -> dict[str, Any]:
    """POST /api/v1/avatars/{id}/loras; the registration (lora_id, upload_url, …)."""
    response = await identity.post(
        f"/api/v1/avatars/{avatar_id}/loras", json={"size_bytes": size_bytes, **fields}, headers=auth
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def send_upload(url: str, data: bytes) -> httpx.Response:
    """PUT the bytes to a presigned upload URL, as a client would; the store's answer."""
    async with httpx.AsyncClient() as s3:
        return await s3.put(url, content=data)


async def put_upload(url: str, data: bytes) -> None:
    """PUT the bytes to a presigned upload URL, as a client would, and see them stored."""
    response = await send_upload(url, data)
    assert response.status_code == 200, response.text


async def write_past_the_url(storage: ObjectStorage, registration: dict[str, Any], data: bytes) -> None:
    """Put `data` at the registration's upload key with a URL signed for its own length: bytes of another size than
    declared, as an uploader would leave them past a store that did not enforce the URL's signed length."""
    url = await storage.presign_put(upload_key_of(registration), ttl_seconds=60, content_length=len(data))
    await put_upload(url, data)


async def uploaded(
    identity: httpx.AsyncClient,
    auth: dict[str, str],
    data: bytes,
    avatar_id: str | None = None,
    declared: int | None = None,
    storage: ObjectStorage | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A registered version (of a new avatar unless one is given) whose bytes were PUT to the upload URL.

    `declared`: the size registered, when a test lies about it. The URL signs that size and the store refuses a body
    of another (403), so the bytes are then written past it with `storage` (write_past_the_url), for identity's own
    check of the size to meet them."""
    avatar_id = avatar_id or (await new_avatar(identity, auth))["id"]
    registration = await register(identity, auth, avatar_id, len(data) if declared is None else declared, **fields)
    registration["upload_key"] = upload_key_of(registration)
    if declared is None or declared == len(data):
        await put_upload(registration["upload_url"], data)
        return registration
    assert storage is not None, "a declared size other than the data's needs `storage` to write the bytes past the URL"
    refused = await send_upload(registration["upload_url"], data)
    assert refused.status_code == 403, refused.text
    await write_past_the_url(storage, registration, data)
    return registration


async def complete(identity: httpx.AsyncClient, auth: dict[str, str], lora_id: str) -> httpx.Response:
    """POST /api/v1/loras/{id}/complete."""
    return await identity.post(f"/api/v1/loras/{lora_id}/complete", headers=auth)


def upload_key_of(registration: dict[str, Any]) -> str:
    """Where the registration's upload URL writes (identity never shows it; tests look there)."""
    return upload_key(uuid.UUID(registration["avatar_id"]), uuid.UUID(registration["lora_id"]))
