"""The sweeper: overdue generations fail with TIMEOUT, late images of canceled ones are deleted, old
Idempotency-Keys are forgotten; every interval, in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from services.content.generations import GenerationService

log = logging.getLogger(__name__)
SWEEP_BATCH = 100


async def sweep_once(generations: GenerationService, grace_seconds: float) -> None:
    """One pass of each chore; a full batch is followed by another, since there may be more."""
    while await generations.fail_overdue(grace_seconds, SWEEP_BATCH) == SWEEP_BATCH:
        pass
    while await generations.purge_late_images(SWEEP_BATCH) == SWEEP_BATCH:
        pass
    await generations.forget_idempotency_keys()


async def sweep_forever(
    generations: GenerationService, interval_seconds: float, grace_seconds: float, stop: asyncio.Event
) -> None:
    """Sweep every interval until stopped; a failing sweep is logged and tried again next time."""
    while not stop.is_set():
        try:
            await sweep_once(generations, grace_seconds)
        except Exception:  # the database may be briefly unreachable; the next sweep tries again
            log.exception("sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)


@contextlib.asynccontextmanager
async def running_sweeper(
    generations: GenerationService, interval_seconds: float, grace_seconds: float
) -> AsyncIterator[None]:
    """Run the sweeper in the background for the life of the app."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        sweep_forever(generations, interval_seconds, grace_seconds, stop), name="content-sweeper"
    )
    try:
        yield
    finally:
        stop.set()
        await task
