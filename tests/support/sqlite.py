"""A throwaway SQLite database with a service's tables, for service-layer tests."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.persistence.db import create_all, create_engine, create_session_factory


@asynccontextmanager
async def sqlite_sessions(path: Path, metadata: MetaData) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await create_all(engine, metadata)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()
