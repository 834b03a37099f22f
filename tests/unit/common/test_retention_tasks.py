"""A service's own retention task runs in the retention loop, and one failing round does not end the loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.persistence.retention import Bookkeeping, RetentionSettings, RetentionTask, running_retention


async def test_a_task_that_fails_once_runs_again_on_the_next_round(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    second_round = asyncio.Event()

    async def flaky() -> None:
        rounds.append(len(rounds) + 1)
        if len(rounds) == 1:
            raise ConnectionError("storage unreachable")
        second_round.set()

    # No bookkeeping tables: the loop never opens a session, only the task runs.
    sessions = cast(async_sessionmaker[AsyncSession], object())
    settings = RetentionSettings(RETENTION_INTERVAL_SECONDS=1)
    task = RetentionTask("flaky sweep", flaky)

    with caplog.at_level(logging.WARNING, logger="services.common.persistence.retention"):
        async with running_retention(sessions, Bookkeeping(), settings, tasks=[task]):
            async with asyncio.timeout(10):
                await second_round.wait()

    assert rounds[:2] == [1, 2]
    warnings: list[Any] = [record.getMessage() for record in caplog.records]
    assert any("flaky sweep failed (ConnectionError)" in message for message in warnings), warnings
    assert not any("storage unreachable" in message for message in warnings)  # the type, never the message
