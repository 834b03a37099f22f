"""Deadline sweeper: every generation reaches a terminal state; one stuck past its deadline fails with TIMEOUT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from services.content.service import ContentService

log = logging.getLogger(__name__)
SWEEP_BATCH = 100


async def sweep_forever(
    service: ContentService, interval_seconds: float, grace_seconds: float, stop: asyncio.Event
) -> None:
    """Sweep every interval until stopped; a failing sweep is logged and tried again next time."""
    while not stop.is_set():
        try:
            while await service.fail_overdue(grace_seconds, SWEEP_BATCH) == SWEEP_BATCH:
                pass  # a full batch: there may be more
        except Exception:  # the database may be briefly unreachable; the next sweep tries again
            log.exception("deadline sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)


@contextlib.asynccontextmanager
async def running_sweeper(
    service: ContentService, interval_seconds: float, grace_seconds: float
) -> AsyncIterator[None]:
    """Run the sweeper in the background for the life of the app."""
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(service, interval_seconds, grace_seconds, stop), name="deadline-sweeper")
    try:
        yield
    finally:
        stop.set()
        await task
