"""Fixtures of the generation use cases' unit tests: a fresh SQLite database, the harness around it, the use cases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.content.changes import ChangeFeed
from services.content.models import Base
from services.content.projection import IdentityProjection
from tests.support.content.harness import Generations, Harness, RecordingHub, StandInImageStore
from tests.support.content.units import Clock
from tests.support.sqlite import sqlite_sessions


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "content.db", Base.metadata) as factory:
        yield factory


@pytest.fixture
def h(sessions: async_sessionmaker[AsyncSession]) -> Harness:
    clock = Clock()
    hub = RecordingHub()
    return Harness(
        sessions=sessions,
        clock=clock,
        images=StandInImageStore(),
        hub=hub,
        feed=ChangeFeed(hub, "content_test_changes"),
        projection=IdentityProjection(sessions, clock=clock),
        commits=[],
    )


@pytest.fixture
def generations(h: Harness) -> Generations:
    return h.generations()
