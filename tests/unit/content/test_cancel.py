"""The owner's cancel: an open generation ends as canceled with one generation.canceled; a finished or foreign one
is refused and left as it was."""

from __future__ import annotations

import uuid

import pytest

from contracts.events import GenerationCanceled, GenerationFailed, GenerationRequested
from services.common.http.errors import ConflictError, NotFoundError
from services.content.models import outbox_table
from tests.support.content.harness import (
    OTHER,
    OWNER,
    Generations,
    Harness,
    _completed,
    _count,
    _outbox,
    _ready_avatar,
    _result,
    _started,
    _submit,
)


@pytest.mark.parametrize("running", [False, True], ids=["queued", "running"])
async def test_cancel_ends_an_open_generation_and_emits_one_generation_canceled(h: Harness, running: bool) -> None:
    generations = h.generations()
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    if running:
        await generations.results.apply(*_result(_started(generation.id)))
    commits = len(h.commits)
    canceled_at = h.clock.advance(5)

    view = await generations.owner_cancel.cancel(OWNER, generation.id)

    assert (view.generation.status, view.generation.finished_at) == ("canceled", canceled_at)
    assert (await generations.reads.get(OWNER, generation.id)).generation.status == "canceled"
    events = await _outbox(h.sessions)
    assert [type(event) for event in events] == [GenerationRequested, GenerationCanceled]
    canceled = events[1]
    assert isinstance(canceled, GenerationCanceled)
    assert (canceled.generation_id, canceled.owner_id, canceled.avatar_id) == (
        str(generation.id),
        OWNER,
        str(avatar_id),
    )
    assert canceled.canceled_at == canceled_at
    assert len(h.commits) == commits + 1


@pytest.mark.parametrize("end", ["completed", "failed", "canceled"])
async def test_a_finished_generation_cannot_be_canceled(h: Harness, generations: Generations, end: str) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    if end == "completed":
        await generations.results.apply(*_result(_completed(generation.id)))
    elif end == "failed":
        failed = GenerationFailed(generation_id=str(generation.id), error_code="CUDA_OOM", error="oom", retryable=True)
        await generations.results.apply(*_result(failed))
    else:
        await generations.owner_cancel.cancel(OWNER, generation.id)
    outbox = await _count(h.sessions, outbox_table)

    with pytest.raises(ConflictError):
        await generations.owner_cancel.cancel(OWNER, generation.id)

    assert (await generations.reads.get(OWNER, generation.id)).generation.status == end
    assert await _count(h.sessions, outbox_table) == outbox


async def test_cancel_of_someone_elses_generation_is_a_404_and_changes_nothing(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)

    for owner_id, generation_id in ((OTHER, generation.id), (OWNER, uuid.uuid4())):
        with pytest.raises(NotFoundError):
            await generations.owner_cancel.cancel(owner_id, generation_id)

    assert (await generations.reads.get(OWNER, generation.id)).generation.status == "queued"
    assert await _count(h.sessions, outbox_table) == 1
