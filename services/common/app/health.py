"""Liveness and readiness, the same in every service: /healthz says the process serves, /readyz says it can work.

An orchestrator restarts a process whose /healthz fails and sends traffic only to one whose /readyz answers 200;
so /healthz checks nothing outside the process, and /readyz checks each dependency the service needs (the
database, the broker, its consumers), each under a short timeout, naming the ones that failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# A check answers None when all is well, else a short reason (no URL, no secret).
Check = Callable[[], Awaitable[str | None]]
CHECK_TIMEOUT_SECONDS = 2.0

router = APIRouter()


class Connection(Protocol):
    """A broker connection (aio-pika's robust connection fits)."""

    @property
    def is_closed(self) -> bool: ...


class Running(Protocol):
    """A consumer (services.common.messaging.broker.Consumer fits)."""

    @property
    def running(self) -> bool: ...


def database_check(engine: AsyncEngine) -> Check:
    """The database answers a trivial query."""

    async def check() -> str | None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None

    return check


def broker_check(connection: Connection) -> Check:
    """The broker connection is open."""

    async def check() -> str | None:
        return "disconnected" if connection.is_closed else None

    return check


def consumers_check(consumers: Sequence[Running]) -> Check:
    """Every consumer is subscribed."""

    async def check() -> str | None:
        stopped = sum(1 for consumer in consumers if not consumer.running)
        return f"{stopped} of {len(consumers)} stopped" if stopped else None

    return check


def install_readiness(app: FastAPI, checks: Mapping[str, Check]) -> None:
    """Make `checks` what /readyz runs (call it in the lifespan, once the dependencies are open)."""
    app.state.readiness_checks = dict(checks)


async def run_checks(checks: Mapping[str, Check]) -> dict[str, str]:
    """Each check's outcome, "ok" or why not; all run at once, each bounded by CHECK_TIMEOUT_SECONDS."""

    async def one(check: Check) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                reason = await check()
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_SECONDS:g}s"
        except Exception as error:  # a failing dependency is an answer here, not an error
            return f"failed: {type(error).__name__}"
        return "ok" if reason is None else reason

    names = list(checks)
    outcomes = await asyncio.gather(*(one(checks[name]) for name in names))
    return dict(zip(names, outcomes, strict=True))


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests (no dependency is asked)."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when every dependency check passes, else 503 naming what failed."""
    checks: Mapping[str, Check] | None = getattr(request.app.state, "readiness_checks", None)
    if checks is None:
        return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
    outcomes = await run_checks(checks)
    ready = all(outcome == "ok" for outcome in outcomes.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": outcomes}, 200 if ready else 503)
