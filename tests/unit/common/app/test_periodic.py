"""The background loops' pause: ends at its time, at once on stop or wake, raises nothing, leaves no waiter behind."""

from __future__ import annotations

import asyncio
import time

from services.common.app.periodic import pause


def _waiters_left() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_a_pause_lasts_its_seconds_when_nothing_is_set() -> None:
    started = time.monotonic()
    await pause(asyncio.Event(), 0.2)
    assert 0.19 <= time.monotonic() - started < 1.0
    await asyncio.sleep(0)
    assert not _waiters_left()


async def test_stop_ends_a_long_pause_at_once() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    await pause(stop, 30.0)
    assert time.monotonic() - started < 1.0


async def test_wake_ends_a_long_pause_at_once_and_stop_stays_unset() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, wake.set)
    started = time.monotonic()
    await pause(stop, 30.0, wake)
    assert time.monotonic() - started < 1.0 and not stop.is_set()
    await asyncio.sleep(0)
    assert not _waiters_left()


async def test_a_pause_after_stop_returns_at_once() -> None:
    stop = asyncio.Event()
    stop.set()
    started = time.monotonic()
    await pause(stop, 30.0)
    assert time.monotonic() - started < 0.5
