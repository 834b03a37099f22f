"""ChangeFeed on PostgreSQL (NOTIFY between replicas, reconnects) and on SQLite (in-process after-commit hooks)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.persistence.db import create_engine, create_session_factory
from services.content.changes import ChangeFeed, ChangeHub, _asyncpg_dsn

CHANNEL = "vb_changes_test"
# Generous: a reconnect is 0.1 s of backoff and a connect; a slow CI machine must not fail the test.
DELIVERY = 10.0
# Short: for what must NOT arrive, checked only after something sent later has arrived.
SILENCE = 0.05


@asynccontextmanager
async def running(feed: ChangeFeed, engine: AsyncEngine) -> AsyncIterator[None]:
    """feed.running(engine), returning once its listener is up (the first notify_all says so)."""
    with feed.hub.watch("listening") as listening:
        async with feed.running(engine):
            if engine.dialect.name == "postgresql":
                assert await listening.changed(DELIVERY), "the listener never connected"
            yield


async def announce(feed: ChangeFeed, engine: AsyncEngine, key: str, *, commit: bool = True) -> None:
    async with create_session_factory(engine)() as session:
        await session.begin()
        await session.execute(text("SELECT 1"))  # stands in for the change itself
        await feed.announce(session, key)
        await (session.commit() if commit else session.rollback())


async def test_a_committed_announce_wakes_the_watch(empty_engine: AsyncEngine) -> None:
    feed = ChangeFeed(ChangeHub(), CHANNEL)
    async with running(feed, empty_engine):
        with feed.hub.watch("g-1") as watch, feed.hub.watch("g-2") as other:
            await announce(feed, empty_engine, "g-1")
            assert await watch.changed(DELIVERY)
            assert not await other.changed(SILENCE)


async def test_a_rolled_back_announce_wakes_nobody(empty_engine: AsyncEngine) -> None:
    feed = ChangeFeed(ChangeHub(), CHANNEL)
    async with running(feed, empty_engine):
        with feed.hub.watch("rolled-back") as rolled_back, feed.hub.watch("later") as later:
            await announce(feed, empty_engine, "rolled-back", commit=False)
            await announce(feed, empty_engine, "later")
            # Delivered in commit order: once "later" is in, a notice of the rollback would be too.
            assert await later.changed(DELIVERY)
            assert not await rolled_back.changed(SILENCE)


async def test_a_released_savepoint_waits_for_the_outer_commit(empty_engine: AsyncEngine) -> None:
    feed = ChangeFeed(ChangeHub(), CHANNEL)
    async with running(feed, empty_engine):
        with feed.hub.watch("in-savepoint") as watch, feed.hub.watch("later") as later:
            async with create_session_factory(empty_engine)() as session:
                await session.begin()
                async with session.begin_nested():
                    await feed.announce(session, "in-savepoint")
                # Released, not committed: the change is still invisible to others.
                assert not await watch.changed(SILENCE)
                await session.rollback()
            await announce(feed, empty_engine, "later")
            assert await later.changed(DELIVERY)
            assert not await watch.changed(SILENCE)

            async with create_session_factory(empty_engine)() as session:
                await session.begin()
                async with session.begin_nested():
                    await feed.announce(session, "in-savepoint")
                await session.commit()
            assert await watch.changed(DELIVERY)


async def test_a_session_announces_again_after_a_rollback(empty_engine: AsyncEngine) -> None:
    feed = ChangeFeed(ChangeHub(), CHANNEL)
    async with running(feed, empty_engine):
        with feed.hub.watch("first") as first, feed.hub.watch("second") as second:
            async with create_session_factory(empty_engine)() as session:
                await session.begin()
                await feed.announce(session, "first")
                await session.rollback()
                await session.begin()
                await feed.announce(session, "second")
                await session.commit()
            assert await second.changed(DELIVERY)
            assert not await first.changed(SILENCE)


async def test_an_announce_reaches_every_replica(pg_url: URL) -> None:
    engines = [create_engine(pg_url), create_engine(pg_url)]
    feeds = [ChangeFeed(ChangeHub(), CHANNEL), ChangeFeed(ChangeHub(), CHANNEL)]
    try:
        async with running(feeds[0], engines[0]), running(feeds[1], engines[1]):
            with feeds[0].hub.watch("g-1") as here, feeds[1].hub.watch("g-1") as there:
                await announce(feeds[0], engines[0], "g-1")
                assert await there.changed(DELIVERY)
                assert await here.changed(DELIVERY)

                await announce(feeds[1], engines[1], "g-1", commit=False)
                with feeds[0].hub.watch("g-2") as later_here, feeds[1].hub.watch("g-2") as later_there:
                    await announce(feeds[1], engines[1], "g-2")
                    assert await later_here.changed(DELIVERY)
                    assert await later_there.changed(DELIVERY)
                assert not await here.changed(SILENCE)
                assert not await there.changed(SILENCE)
    finally:
        for engine in engines:
            await engine.dispose()


async def test_the_listener_reconnects_and_wakes_everyone(pg_url: URL, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(pg_url)
    feed = ChangeFeed(ChangeHub(), CHANNEL)
    try:
        async with running(feed, engine):
            with feed.hub.watch("g-1") as watch, feed.hub.watch("g-2") as later:
                async with engine.connect() as connection:
                    killed = await connection.scalar(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                        )
                    )
                assert killed == 1
                # Whatever was announced while it was away is lost: everyone is told to re-read.
                assert await watch.changed(DELIVERY)
                assert await later.changed(DELIVERY)

                await announce(feed, engine, "g-2")
                assert await later.changed(DELIVERY)
                assert not await watch.changed(SILENCE)
        assert any(
            record.levelno == logging.WARNING and "lost the listening connection" in record.getMessage()
            for record in caplog.records
        )
        assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("change-feed")]
    finally:
        await engine.dispose()


async def test_the_app_starts_while_postgresql_is_down(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = create_engine(f"postgresql+asyncpg://vb:s3cret-pw@127.0.0.1:{port}/vb")
    failed = asyncio.Event()

    class Flag(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cannot listen" in record.getMessage():
                failed.set()

    handler = Flag(logging.WARNING)
    logging.getLogger("services.content.changes").addHandler(handler)
    feed = ChangeFeed(ChangeHub(), CHANNEL)
    try:
        async with feed.running(engine):  # enters at once, although nothing answers
            await asyncio.wait_for(failed.wait(), DELIVERY)
        assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("change-feed")]
        assert all("s3cret-pw" not in record.getMessage() for record in caplog.records)
    finally:
        logging.getLogger("services.content.changes").removeHandler(handler)
        await engine.dispose()


def test_the_listener_dsn_is_plain_libpq_and_keeps_the_password() -> None:
    url = URL.create("postgresql+asyncpg", "vb", "p@ss:word", "db.internal", 5433, "vixen")
    assert _asyncpg_dsn(url) == "postgresql://vb:p%40ss%3Aword@db.internal:5433/vixen"
