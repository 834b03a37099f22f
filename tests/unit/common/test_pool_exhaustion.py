"""A database pool with no connection free answers 503 with Retry-After in every app, never a 500: a real pool
(SQLite file, one connection, a short checkout timeout) whose only connection the test holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.http.errors import BUSY_RETRY_AFTER_SECONDS, install_error_handlers
from services.common.persistence.db import PoolLimits, create_engine, database_unreachable, pool_exhausted


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    opened = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", pool=PoolLimits(1, 0, 0.2))
    yield opened
    await opened.dispose()


def _app(engine: AsyncEngine, *, with_unavailable: bool) -> FastAPI:
    app = FastAPI()
    # The gateway installs the handlers without `unavailable`: the pool's answer must not depend on it.
    install_error_handlers(app, unavailable=database_unreachable if with_unavailable else None)

    @app.get("/count")
    async def count() -> dict[str, int]:
        async with engine.connect() as connection:
            return {"count": int((await connection.execute(text("SELECT 1"))).scalar_one())}

    return app


@pytest.mark.parametrize("with_unavailable", [True, False])
async def test_a_checkout_that_times_out_is_a_503_with_retry_after(engine: AsyncEngine, with_unavailable: bool) -> None:
    transport = httpx.ASGITransport(app=_app(engine, with_unavailable=with_unavailable), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/count")).json() == {"count": 1}
        async with engine.connect():  # the pool's only connection, held
            response = await client.get("/count")
        after = await client.get("/count")

    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(BUSY_RETRY_AFTER_SECONDS)
    body = response.json()
    assert (body["error_code"], body["details"]["reason_code"]) == ("SERVICE_UNAVAILABLE", "DATABASE_BUSY")
    assert "QueuePool" not in response.text
    assert after.status_code == 200


async def test_the_pool_limits_are_those_given(engine: AsyncEngine) -> None:
    pool = engine.pool
    assert (pool.size(), pool.timeout()) == (1, 0.2)  # type: ignore[attr-defined]
    async with engine.connect():
        with pytest.raises(Exception) as caught:
            async with engine.connect():
                pass
    assert pool_exhausted(caught.value)
