"""LoRA files in the bucket: signed upload URLs, and the one-pass verify-then-store into an immutable key."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from contracts.lora_targets import TargetTable
from contracts.object_keys import lora_object_key
from services.common.storage.objects import ObjectInfo, ObjectTooLargeError
from services.identity.verification import LoraVerifier, VerifiedLora, too_large

# Verified bytes wait in memory up to this size, then in a temporary file.
SPOOL_IN_MEMORY_BYTES = 16 * 1024 * 1024
SAFETENSORS_CONTENT_TYPE = "application/octet-stream"


class LoraObjects(Protocol):
    """What identity needs from object storage (services.common.storage.objects.ObjectStorage fits)."""

    async def presign_put(
        self, key: str, ttl_seconds: int, content_type: str | None = None, content_length: int | None = None
    ) -> str: ...

    async def read_into(self, key: str, sink: Callable[[bytes], None], *, max_bytes: int) -> ObjectInfo: ...

    async def put_file(self, key: str, source: IO[bytes], *, sha256: str, content_type: str = ...) -> None: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...


def upload_key(avatar_id: uuid.UUID, lora_id: uuid.UUID) -> str:
    """Where the client PUTs a version's file (under uploads/, which a bucket lifecycle rule may expire)."""
    return f"uploads/loras/{avatar_id}/{lora_id}.safetensors"


def immutable_key(sha256: str) -> str:
    """Where a verified file lives: named by its content, written only by identity, never by an upload URL."""
    return lora_object_key(sha256)


@dataclass(frozen=True)
class StoredLora:
    """A verified file and the immutable key its checked bytes were stored under."""

    verified: VerifiedLora
    object_key: str


class LoraFiles:
    """Reads a file once (hashing, parsing and spooling the same bytes) and stores what was checked."""

    def __init__(self, objects: LoraObjects, *, max_bytes: int, spool_dir: str | None = None) -> None:
        self._objects = objects
        self._max_bytes = max_bytes
        self._spool_dir = spool_dir

    async def presign_upload(self, key: str, ttl_seconds: int, size_bytes: int) -> str:
        """A PUT URL for `key`, signed for exactly `size_bytes` bytes."""
        return await self._objects.presign_put(key, ttl_seconds, content_length=size_bytes)

    async def verify_and_store(self, key: str, table: TargetTable, *, declared_size: int | None) -> StoredLora:
        """Verify the object at `key` and copy the verified bytes to their immutable key.

        Raises LoraRejectedError (the file is refused) or ObjectNotFoundError (nothing uploaded yet).
        The copy is of the bytes read and checked here, not a server-side copy of `key`, which an upload URL
        could still change in between.
        """
        verifier = LoraVerifier(table, max_bytes=self._max_bytes, declared_size=declared_size)
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY_BYTES, dir=self._spool_dir) as spool:

            def sink(chunk: bytes) -> None:
                verifier.feed(chunk)
                spool.write(chunk)

            try:
                await self._objects.read_into(key, sink, max_bytes=self._max_bytes)
            except ObjectTooLargeError:
                raise too_large(self._max_bytes) from None

            def read_at(offset: int, length: int) -> bytes:
                spool.seek(offset)
                return spool.read(length)

            verified = verifier.finish(read_at)
            target = immutable_key(verified.sha256)
            # Same name, same bytes: a file verified before (by anyone) is already there.
            if not await self._objects.exists(target):
                spool.seek(0)
                await self._objects.put_file(
                    target, spool, sha256=verified.sha256, content_type=SAFETENSORS_CONTENT_TYPE
                )
        return StoredLora(verified, target)

    async def discard(self, key: str) -> None:
        """Delete an upload object once its bytes were stored or refused."""
        await self._objects.delete(key)
