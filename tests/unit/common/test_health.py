"""/healthz asks nothing; /readyz runs every check at once, each bounded, and names the ones that failed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.common.app import health
from services.common.persistence.db import create_engine


async def _get(app: FastAPI, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        return await client.get(path)


def _app(checks: Mapping[str, health.Check] | None) -> FastAPI:
    app = FastAPI()
    app.include_router(health.router)
    if checks is not None:
        health.install_readiness(app, checks)
    return app


async def _ok() -> str | None:
    return None


async def _says_no() -> str | None:
    return "disconnected"


async def _raises() -> str | None:
    raise ConnectionRefusedError("postgresql://user:hunter2@db/x refused")


async def _hangs() -> str | None:
    await asyncio.Event().wait()
    return None


async def test_healthz_answers_without_asking_any_dependency() -> None:
    response = await _get(_app({"broker": _says_no}), "/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_is_200_when_every_check_passes() -> None:
    response = await _get(_app({"database": _ok, "broker": _ok}), "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_readyz_is_503_naming_each_failed_check_without_its_exception_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.05)
    checks = {"database": _raises, "broker": _says_no, "consumers": _hangs, "storage": _ok}
    response = await _get(_app(checks), "/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {
            "database": "failed: ConnectionRefusedError",
            "broker": "disconnected",
            "consumers": "no answer within 0.05s",
            "storage": "ok",
        },
    }
    assert "hunter2" not in response.text


async def test_readyz_is_503_before_the_lifespan_installed_its_checks() -> None:
    response = await _get(_app(None), "/readyz")
    assert (response.status_code, response.json()["status"]) == (503, "starting")


async def test_the_database_check_asks_the_database(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert await health.database_check(engine)() is None
    finally:
        await engine.dispose()
    missing = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite'}")
    try:
        outcomes = await health.run_checks({"database": health.database_check(missing)})
    finally:
        await missing.dispose()
    assert outcomes == {"database": "failed: OperationalError"}


class _Consumer:
    def __init__(self, running: bool) -> None:
        self.running = running


class _Connection:
    def __init__(self, closed: bool) -> None:
        self.is_closed = closed


@pytest.mark.parametrize(
    ("consumers", "expected"), [([True, True], None), ([True, False], "1 of 2 stopped"), ([], None)]
)
async def test_the_consumers_check_counts_stopped_consumers(consumers: list[bool], expected: Any) -> None:
    assert await health.consumers_check([_Consumer(running) for running in consumers])() == expected


async def test_the_broker_check_reads_the_connection() -> None:
    assert await health.broker_check(_Connection(closed=False))() is None
    assert await health.broker_check(_Connection(closed=True))() == "disconnected"
