"""Change notices: the watches that submits, results, cancels and timeouts wake once they commit."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.http.errors import ConflictError
from services.content.changes import ChangeFeed
from tests.support.content.harness import (
    DEADLINE,
    OWNER,
    Generations,
    Harness,
    _completed,
    _ready_avatar,
    _result,
    _snapshot,
    _started,
    _submit,
)
from tests.support.content.units import T0

# --- change notices ---------------------------------------------------------------------------------------------


async def test_a_submit_announces_its_generation_once_it_committed(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)

    generation = await _submit(generations.submissions, avatar_id)

    assert h.hub.notified == [str(generation.id)]


class AnnounceThenFail(ChangeFeed):
    """A feed whose transaction fails right after the announcement (as a failed commit would)."""

    async def announce(self, session: AsyncSession, key: str) -> None:
        await super().announce(session, key)
        raise RuntimeError("the transaction fails after the announcement")


async def test_a_rolled_back_submit_wakes_nobody_and_leaves_nothing(h: Harness) -> None:
    generations = h.generations(feed=AnnounceThenFail(h.hub, "content_test_changes"))
    avatar_id, _ = await _ready_avatar(h)
    before = await _snapshot(h.sessions)

    with pytest.raises(RuntimeError, match="after the announcement"):
        await _submit(generations.submissions, avatar_id)

    assert h.hub.notified == []
    assert await _snapshot(h.sessions) == before
    assert h.commits == []


async def test_a_watch_wakes_on_each_result(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)

    with h.hub.watch(str(generation.id)) as watch, h.hub.watch(str(uuid.uuid4())) as other:
        assert not await watch.changed(0)
        await generations.results.apply(*_result(_started(generation.id)))
        assert await watch.changed(0)
        await generations.results.apply(*_result(_completed(generation.id)))
        assert await watch.changed(0)
        assert not await other.changed(0)


async def test_a_watch_wakes_on_cancel(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)

    with h.hub.watch(str(generation.id)) as watch:
        await generations.owner_cancel.cancel(OWNER, generation.id)
        assert await watch.changed(0)
        with pytest.raises(ConflictError):
            await generations.owner_cancel.cancel(OWNER, generation.id)
        assert not await watch.changed(0)


async def test_a_watch_wakes_on_timeout(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 1)

    with h.hub.watch(str(generation.id)) as watch:
        await generations.chores.fail_overdue(grace_seconds=0)
        assert await watch.changed(0)
        await generations.chores.fail_overdue(grace_seconds=0)
        assert not await watch.changed(0)
