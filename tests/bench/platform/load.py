"""Open-loop and closed-loop load on content's submit, each answer awaited with `Prefer: wait`, and the same
load straight at the worker (the floor)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

# The submit waits for the generation's end in the same request (content's `Prefer: wait=N`).
WAIT_SECONDS = 30


@dataclass(frozen=True)
class Sample:
    """One generation: how long the caller waited, how much of it the worker spent, and whether it completed."""

    seconds: float
    worker_seconds: float
    ok: bool


Call = Callable[[httpx.AsyncClient, int], Awaitable[Sample]]


def content_call(content: str, auth: dict[str, str], avatar_id: str, size: int = 64) -> Call:
    """POST /api/v1/content/generate with `Prefer: wait`, timed until the terminal answer."""
    headers = {**auth, "Prefer": f"wait={WAIT_SECONDS}"}

    async def call(client: httpx.AsyncClient, seed: int) -> Sample:
        body = {"avatar_id": avatar_id, "prompt": "bench", "width": size, "height": size, "steps": 1, "seed": seed}
        started = time.perf_counter()
        try:
            response = await client.post(f"{content}/api/v1/content/generate", json=body, headers=headers)
        except httpx.HTTPError:
            return Sample(time.perf_counter() - started, 0.0, False)
        seconds = time.perf_counter() - started
        answer = response.json() if response.status_code == 202 else {}
        timings = answer.get("worker_timings") or {}
        ok = answer.get("status") == "completed"
        return Sample(seconds, float(timings.get("total_ms", 0.0)) / 1000.0, ok)

    return call


def worker_call(worker: str, size: int = 64) -> Call:
    """POST /generate on the worker itself: the same request without the platform around it."""

    async def call(client: httpx.AsyncClient, seed: int) -> Sample:
        body = {"prompt": "bench", "width": size, "height": size, "steps": 1, "seed": seed}
        started = time.perf_counter()
        try:
            response = await client.post(f"{worker}/generate", json=body)
        except httpx.HTTPError:
            return Sample(time.perf_counter() - started, 0.0, False)
        seconds = time.perf_counter() - started
        ok = response.status_code == 200
        total_ms = float(((response.json() if ok else {}).get("timings") or {}).get("total_ms", 0.0))
        return Sample(seconds, total_ms / 1000.0, ok)

    return call


async def open_loop(call: Call, rate: float, seconds: float) -> tuple[list[Sample], float]:
    """Start a call every 1/rate seconds for `seconds`, whatever the answers take; the samples and the wall time
    until the last answer."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=WAIT_SECONDS + 30, limits=limits) as client:
        started = time.perf_counter()
        tasks: list[asyncio.Task[Sample]] = []
        count = int(rate * seconds)
        for index in range(count):
            due = started + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(call(client, index)))
        samples = await asyncio.gather(*tasks)
        return list(samples), time.perf_counter() - started


async def closed_loop(call: Call, concurrency: int, seconds: float) -> tuple[list[Sample], float]:
    """`concurrency` callers, each calling again as soon as its answer came, for `seconds`."""
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency + 10)
    samples: list[Sample] = []
    async with httpx.AsyncClient(timeout=WAIT_SECONDS + 30, limits=limits) as client:
        started = time.perf_counter()
        ends = started + seconds

        async def caller(offset: int) -> None:
            seed = offset
            while time.perf_counter() < ends:
                samples.append(await call(client, seed))
                seed += concurrency

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return samples, time.perf_counter() - started
