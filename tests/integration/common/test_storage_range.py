"""ObjectStorage.get_range against moto's S3 server: a slice of an object without reading the rest."""

from __future__ import annotations

import os

import pytest

from services.common.storage import ObjectNotFoundError, ObjectStorage


async def test_get_range_returns_the_asked_slice_and_less_at_the_end(storage: ObjectStorage) -> None:
    data = os.urandom(10_000)
    await storage.put_bytes("blobs/range.bin", data)

    assert await storage.get_range("blobs/range.bin", 0, 8) == data[:8]
    assert await storage.get_range("blobs/range.bin", 8, 1000) == data[8:1008]
    assert await storage.get_range("blobs/range.bin", 9_990, 100) == data[9_990:]


async def test_get_range_of_a_missing_object_is_not_found(storage: ObjectStorage) -> None:
    with pytest.raises(ObjectNotFoundError):
        await storage.get_range("blobs/missing.bin", 0, 8)
