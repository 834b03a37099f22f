"""The other owners of the stream benchmark: their API calls, paced by the clock, from a process of their own (the
flood client's loop, busy with thousands of sockets, must not delay these calls or their timings)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Call:
    """One of the other owners' calls: its status (0: no answer), how long it took, and when it began
    (time.perf_counter: CLOCK_MONOTONIC, the same clock in every process of the machine)."""

    status: int
    seconds: float
    at: float


async def other_owners_load(
    url: str, owners: list[tuple[dict[str, str], str]], rate: float, stop: Callable[[], bool]
) -> list[Call]:
    """GET each other owner's generation in turn, `rate` calls a second (open loop: a slow answer does not slow
    the next call) until `stop()`."""
    calls: list[Call] = []
    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def one(auth: dict[str, str], generation_id: str) -> None:
            begun = time.perf_counter()
            try:
                response = await client.get(f"/api/v1/content/{generation_id}", headers=auth)
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            calls.append(Call(status, time.perf_counter() - begun, begun))

        loop = asyncio.get_running_loop()
        next_at, index = loop.time(), 0
        while not stop():
            auth, generation_id = owners[index % len(owners)]
            tasks.append(asyncio.create_task(one(auth, generation_id)))
            index += 1
            next_at += 1.0 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # paced by the clock, not by the answers
        await asyncio.gather(*tasks)
    return calls


def _other_owners_process(
    url: str, owners: list[tuple[dict[str, str], str]], rate: float, stop: Any, results: Any
) -> None:
    # A process of its own: the flood client's loop (thousands of sockets) must not delay these calls' timings.
    calls = asyncio.run(other_owners_load(url, owners, rate, stop.is_set))
    results.put([(call.status, call.seconds, call.at) for call in calls])


class OtherOwners:
    """The other owners' calls, made by a separate process from start() until stop()."""

    def __init__(self, url: str, owners: list[tuple[dict[str, str], str]], rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results: Any = context.Queue()
        self._process = context.Process(
            target=_other_owners_process, args=(url, owners, rate, self._stop, self._results), daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def stop(self) -> list[Call]:
        self._stop.set()
        calls = [Call(status, seconds, at) for status, seconds, at in self._results.get(timeout=120)]
        self._process.join(timeout=30)
        return calls
