"""The pause between two rounds of a background loop (sweeper, retention, outbox relay, job claims and renewals)."""

from __future__ import annotations

import asyncio


async def pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Return after `seconds`, or as soon as `stop` (or `wake`) is set, whichever comes first; never raises
    TimeoutError. The loop checks `stop` itself: a pause cut short by it only ends the wait."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
