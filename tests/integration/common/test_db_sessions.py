"""Engines and sessions on the real PostgreSQL: reads without a transaction, no pre-ping round trip."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.persistence.db import POOL_RECYCLE_SECONDS, create_engine, create_session_factory, read_session


async def now_twice(session: AsyncSession) -> tuple[object, object]:
    """now() before and after a pause: equal inside one transaction (now() is its start), apart when each
    statement is a transaction of its own."""
    first = (await session.execute(text("SELECT now()"))).scalar_one()
    await session.execute(text("SELECT pg_sleep(0.01)"))
    return first, (await session.execute(text("SELECT now()"))).scalar_one()


async def test_a_read_session_runs_each_statement_on_its_own_and_a_session_in_one_transaction(pg_url: URL) -> None:
    engine = create_engine(pg_url)
    sessions = create_session_factory(engine)
    try:
        async with read_session(sessions) as session:
            before, after = await now_twice(session)
            assert before != after
        async with sessions() as session:
            before, after = await now_twice(session)
            assert before == after
        # The pooled connection went back to the default: the next session is a transaction again.
        async with sessions() as session:
            before, after = await now_twice(session)
            assert before == after
    finally:
        await engine.dispose()


async def test_the_pool_recycles_instead_of_pinging(pg_url: URL) -> None:
    engine = create_engine(pg_url)
    try:
        assert engine.pool._pre_ping is False  # type: ignore[attr-defined]
        assert engine.pool._recycle == POOL_RECYCLE_SECONDS  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
