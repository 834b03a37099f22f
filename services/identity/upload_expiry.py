"""Expiring LoRA registrations: identity's retention loop marks the ones past their time expired and deletes the upload
objects no registration can use any more (a bucket lifecycle rule is not needed for it)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.identity import repository
from services.identity.clock import utc_now
from services.identity.lora_files import upload_key

log = logging.getLogger(__name__)

BATCH = 100


class UploadObjects(Protocol):
    """What the sweep needs from object storage (services.common.storage.objects.ObjectStorage fits): an idempotent
    delete."""

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did, and whether storage refused it (the rest is left for the next one)."""

    expired: int
    uploads_deleted: int
    storage_failed: bool = False


def upload_object_of(avatar_id: uuid.UUID, lora_id: uuid.UUID) -> str:
    """The one object a version's registration may have left: derived from its ids, never read from the row, so an
    admin import (whose row names the source object it was copied from) or a ready version's content-addressed file
    under loras/sha256/ is never what is deleted."""
    return upload_key(avatar_id, lora_id)


class UploadSweeper:
    """Expire registrations past their time, then delete the upload objects of every version whose registration has
    expired (ready, rejected, retired or expired alike: past that time its URL cannot write any more)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        objects: UploadObjects,
        *,
        clock: Callable[[], datetime] = utc_now,
        batch: int = BATCH,
    ) -> None:
        self._sessions = sessions
        self._objects = objects
        self._clock = clock
        self._batch = batch

    async def run(self) -> None:
        """One sweep, for the retention loop (it logs what was done)."""
        result = await self.sweep()
        if result.expired or result.uploads_deleted:
            log.info(
                "retention: %d LoRA registrations expired, %d upload objects deleted",
                result.expired,
                result.uploads_deleted,
            )

    async def sweep(self) -> SweepResult:
        """Expire, then delete in batches; a storage failure stops the sweep (the rows stay due and are retried)."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            expired = await repository.expire_registrations(session, now)
        deleted = 0
        while True:
            async with self._sessions() as session:
                due = await repository.uploads_due(session, now, self._batch)
            done, failed = await self._delete(due)
            if done:
                async with self._sessions() as session, session.begin():
                    await repository.mark_uploads_deleted(session, done, now)
            deleted += len(done)
            if failed or len(due) < self._batch:
                return SweepResult(expired, deleted, storage_failed=failed)

    async def _delete(self, due: list[tuple[uuid.UUID, uuid.UUID]]) -> tuple[list[uuid.UUID], bool]:
        """Delete each due version's upload object (a missing one counts as deleted); stop at the first failure."""
        done: list[uuid.UUID] = []
        for lora_id, avatar_id in due:
            try:
                await self._objects.delete(upload_object_of(avatar_id, lora_id))
            except Exception as error:
                # Storage is down or refusing: the row stays due, the next sweep tries again.
                log.warning("retention: could not delete an upload object (%s); retried later", type(error).__name__)
                return done, True
            done.append(lora_id)
        return done, False
