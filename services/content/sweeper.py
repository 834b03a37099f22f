"""The sweeper: overdue generations fail with TIMEOUT, late images of canceled ones are deleted, old
Idempotency-Keys are forgotten; every interval, in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.app.periodic import pause
from services.common.observability.metrics import ServiceMetrics
from services.content import decisions, events, repository
from services.content.changes import ChangeFeed
from services.content.clock import Clock, utc_now
from services.content.metrics import GenerationMetrics
from services.content.reads import ImageStore

log = logging.getLogger(__name__)
SWEEP_BATCH = 100


class SweeperChores:
    """The chores of one sweep, each a batch in one transaction; rows another sweeper holds are skipped."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        images: ImageStore,
        changes: ChangeFeed,
        *,
        idempotency_ttl_seconds: int,
        clock: Clock = utc_now,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._images = images
        self._changes = changes
        self._idempotency_ttl_seconds = idempotency_ttl_seconds
        self._clock = clock
        self._metrics = GenerationMetrics(metrics)

    async def fail_overdue(self, grace_seconds: float, limit: int = 100) -> int:
        """Fail (TIMEOUT) up to `limit` open generations whose deadline passed more than grace_seconds ago (and
        tell the requesting service of each a command made: generation.finished)."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            overdue = await repository.overdue_generations(session, now - timedelta(seconds=grace_seconds), limit)
            before = {generation.id: (generation.status, generation.started_at) for generation in overdue}
            timed_out = [generation for generation in overdue if decisions.time_out(generation, now)]
            failed = [generation.id for generation in timed_out]
            for generation in timed_out:
                await self._changes.announce(session, str(generation.id))
                await events.emit_finished(session, generation)
        for generation in timed_out:
            self._metrics.changed(generation, *before[generation.id])
        for generation_id in failed:
            log.warning("generation %s failed: no result before its deadline", generation_id)
        return len(failed)

    async def purge_late_images(self, limit: int = 100) -> int:
        """Delete images that came after their generation was canceled; how many were deleted. One that cannot
        be deleted now stays marked, and the next sweep tries again."""
        purged = 0
        async with self._sessions() as session, session.begin():
            for generation in await repository.images_to_purge(session, limit):
                try:
                    # The derived key, never the event's: a purge deletes this generation's image and nothing else.
                    await self._images.delete(decisions.image_key(generation))
                except Exception as error:  # storage may be briefly unreachable: the sweeper retries
                    log.warning(
                        "could not delete the late image of canceled generation %s: %s",
                        generation.id,
                        type(error).__name__,
                    )
                    continue
                generation.image_purge_pending = False
                purged += 1
        return purged

    async def forget_idempotency_keys(self) -> int:
        """Drop Idempotency-Keys older than their lifetime; how many were dropped."""
        before = self._clock() - timedelta(seconds=self._idempotency_ttl_seconds)
        async with self._sessions() as session, session.begin():
            return await repository.delete_idempotency_keys_before(session, before)


async def sweep_once(chores: SweeperChores, grace_seconds: float) -> None:
    """One pass of each chore; a full batch is followed by another, since there may be more."""
    while await chores.fail_overdue(grace_seconds, SWEEP_BATCH) == SWEEP_BATCH:
        pass
    while await chores.purge_late_images(SWEEP_BATCH) == SWEEP_BATCH:
        pass
    await chores.forget_idempotency_keys()


async def sweep_forever(
    chores: SweeperChores, interval_seconds: float, grace_seconds: float, stop: asyncio.Event
) -> None:
    """Sweep every interval until stopped; a failing sweep is logged and tried again next time."""
    while not stop.is_set():
        try:
            await sweep_once(chores, grace_seconds)
        except Exception:  # the database may be briefly unreachable; the next sweep tries again
            log.exception("sweep failed")
        await pause(stop, interval_seconds)


@contextlib.asynccontextmanager
async def running_sweeper(chores: SweeperChores, interval_seconds: float, grace_seconds: float) -> AsyncIterator[None]:
    """Run the sweeper in the background for the life of the app."""
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(chores, interval_seconds, grace_seconds, stop), name="content-sweeper")
    try:
        yield
    finally:
        stop.set()
        await task
