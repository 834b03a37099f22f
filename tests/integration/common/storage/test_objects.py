"""Object storage against the local SeaweedFS: presigned PUT/GET, put/get, head with sha256."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from services.common.storage.objects import ObjectNotFoundError, ObjectStorage, ObjectTooLargeError


async def test_presigned_put_then_get_round_trips_bytes(storage: ObjectStorage) -> None:
    data = os.urandom(4096)
    key = "loras/avatar-1/model.safetensors"
    put_url = await storage.presign_put(key, ttl_seconds=60)
    async with httpx.AsyncClient() as client:
        uploaded = await client.put(put_url, content=data)
        assert uploaded.status_code == 200
        get_url = await storage.presign_get(key, ttl_seconds=60)
        downloaded = await client.get(get_url)
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert "X-Amz-Signature=" in get_url and "X-Amz-Expires=60" in get_url


async def test_an_uploaded_object_carries_no_digest_and_reads_back_in_one_pass(storage: ObjectStorage) -> None:
    data = b"lora bytes" * 300_000
    put_url = await storage.presign_put("uploads/x.bin", ttl_seconds=60, content_length=len(data))
    async with httpx.AsyncClient() as client:
        assert (await client.put(put_url, content=data)).status_code == 200
    chunks: list[bytes] = []

    head = await storage.head("uploads/x.bin")
    read = await storage.read_into("uploads/x.bin", chunks.append, max_bytes=len(data))

    assert head.size == len(data) and head.sha256 is None  # a browser upload carries no digest
    assert read.size == len(data) and len(chunks) > 1
    assert b"".join(chunks) == data
    with pytest.raises(ObjectTooLargeError):
        await storage.read_into("uploads/x.bin", chunks.append, max_bytes=len(data) - 1)


async def test_put_get_and_head_use_the_recorded_sha256(storage: ObjectStorage) -> None:
    data = b"\x89PNG fake image"
    info = await storage.put_bytes("outputs/gen-1.png", data, content_type="image/png")
    head = await storage.head("outputs/gen-1.png")

    assert await storage.get_bytes("outputs/gen-1.png") == data
    assert info.sha256 == head.sha256 == hashlib.sha256(data).hexdigest()
    assert head.size == len(data) and head.content_type == "image/png"
    assert await storage.exists("outputs/gen-1.png")


async def test_missing_and_oversized_objects_raise(storage: ObjectStorage) -> None:
    with pytest.raises(ObjectNotFoundError):
        await storage.head("nope")
    with pytest.raises(ObjectNotFoundError):
        await storage.get_bytes("nope")
    assert not await storage.exists("nope")
    await storage.put_bytes("big", b"x" * 100)
    with pytest.raises(ObjectTooLargeError):
        await storage.get_bytes("big", max_bytes=99)


async def test_ensure_bucket_is_idempotent(storage: ObjectStorage) -> None:
    await storage.ensure_bucket()
    await storage.put_bytes("k", b"v")
    await storage.ensure_bucket()
    assert await storage.get_bytes("k") == b"v"
