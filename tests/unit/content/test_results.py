"""Applying result events: worker results, inbox duplicates, late events, and purging late images."""

from __future__ import annotations

import uuid

import pytest

from contracts.events import GenerationFailed, GenerationStarted, LoraReady
from contracts.object_keys import generation_image_key, lora_object_key
from services.content.decisions import UnexpectedEventError, status_steps
from services.content.models import inbox_table
from services.content.sweeper import sweep_once
from tests.support.content.harness import (
    OWNER,
    SHA,
    Generations,
    Harness,
    _completed,
    _count,
    _ready_avatar,
    _result,
    _started,
    _submit,
)
from tests.support.content.units import T0


async def test_results_move_the_generation_forward_and_record_when(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)

    started_at = h.clock.advance(2)
    await generations.results.apply(*_result(_started(generation.id)))
    running = (await generations.reads.get(OWNER, generation.id)).generation
    finished_at = h.clock.advance(3)
    await generations.results.apply(*_result(_completed(generation.id, attempts=2)))
    done = (await generations.reads.get(OWNER, generation.id)).generation

    assert (running.status, running.started_at, running.finished_at) == ("running", started_at, None)
    assert (done.status, done.started_at, done.finished_at) == ("completed", started_at, finished_at)
    assert (done.attempts, done.generation_time_seconds) == (2, 0.5)
    assert done.timings is not None and done.timings["total_ms"] == 500.0
    assert done.image is not None and done.image["object_key"] == generation_image_key(generation.id)


async def test_a_result_applied_before_its_start_still_records_when_the_generation_started(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    attempt_began = h.clock.advance(1)
    finished_at = h.clock.advance(3)

    completed = _completed(generation.id).model_copy(update={"started_at": attempt_began})
    await generations.results.apply(*_result(completed))
    await generations.results.apply(*_result(_started(generation.id)))  # overtaken: changes nothing
    done = (await generations.reads.get(OWNER, generation.id)).generation

    assert (done.status, done.started_at, done.finished_at) == ("completed", attempt_began, finished_at)
    assert [step.status for step in status_steps(done)] == ["queued", "running", "completed"]


async def test_a_result_without_a_start_time_leaves_the_start_unknown(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)

    await generations.results.apply(*_result(_completed(generation.id)))
    done = (await generations.reads.get(OWNER, generation.id)).generation

    assert (done.status, done.started_at) == ("completed", None)
    assert [step.status for step in status_steps(done)] == ["queued", "completed"]


async def test_a_failed_result_records_the_error(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    failed = GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="not a LoRA", retryable=False
    )

    await generations.results.apply(*_result(failed))

    stored = (await generations.reads.get(OWNER, generation.id)).generation
    assert stored.status == "failed" and stored.error is not None
    assert (stored.error["error_code"], stored.error["retryable"]) == ("LORA_LOAD_FAILED", False)
    assert stored.finished_at == T0


async def test_the_same_result_event_twice_is_applied_once(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    envelope, payload = _result(_completed(generation.id))
    await generations.results.apply(envelope, payload)
    before = (await generations.reads.get(OWNER, generation.id)).generation
    inbox = await _count(h.sessions, inbox_table)
    h.clock.advance(60)

    with h.hub.watch(str(generation.id)) as watch:
        await generations.results.apply(envelope, payload)
        assert not await watch.changed(0)

    after = (await generations.reads.get(OWNER, generation.id)).generation
    assert (after.status, after.updated_at, after.finished_at) == ("completed", before.updated_at, before.finished_at)
    assert await _count(h.sessions, inbox_table) == inbox


async def test_a_redelivered_started_is_applied_once(h: Harness, generations: Generations) -> None:
    # A second started of the same attempt would still touch the row (updated_at) and wake waiters: only the
    # inbox stops it.
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    envelope, payload = _result(_started(generation.id))
    await generations.results.apply(envelope, payload)
    before = (await generations.reads.get(OWNER, generation.id)).generation
    h.clock.advance(60)

    with h.hub.watch(str(generation.id)) as watch:
        await generations.results.apply(envelope, payload)
        assert not await watch.changed(0)

    after = (await generations.reads.get(OWNER, generation.id)).generation
    assert (after.status, after.updated_at, after.started_at) == ("running", before.updated_at, before.started_at)


async def test_a_redelivered_late_completed_deletes_its_image_once(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    await generations.owner_cancel.cancel(OWNER, generation.id)
    envelope, payload = _result(_completed(generation.id))

    await generations.results.apply(envelope, payload)
    await generations.results.apply(envelope, payload)

    assert h.images.deleted == [generation_image_key(generation.id)]


async def test_a_late_started_after_completed_changes_nothing(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    await generations.results.apply(*_result(_completed(generation.id)))
    h.clock.advance(30)

    with h.hub.watch(str(generation.id)) as watch:
        await generations.results.apply(*_result(_started(generation.id, attempt=3)))
        assert not await watch.changed(0)

    stored = (await generations.reads.get(OWNER, generation.id)).generation
    assert (stored.status, stored.started_at, stored.attempts, stored.updated_at) == ("completed", None, 1, T0)


async def test_a_completed_after_cancel_keeps_it_canceled_and_deletes_the_image(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    await generations.owner_cancel.cancel(OWNER, generation.id)

    await generations.results.apply(*_result(_completed(generation.id)))

    view = await generations.reads.get(OWNER, generation.id)
    assert view.generation.status == "canceled" and view.image_url is None
    assert h.images.deleted == [generation_image_key(generation.id)]
    assert view.generation.image_purge_pending is False
    assert h.images.signed == []


async def test_an_image_that_cannot_be_deleted_now_is_deleted_by_the_sweeper(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    await generations.owner_cancel.cancel(OWNER, generation.id)
    h.images.failing_deletes = 1

    await generations.results.apply(*_result(_completed(generation.id)))  # applied all the same

    pending = (await generations.reads.get(OWNER, generation.id)).generation
    assert (pending.status, pending.image_purge_pending, h.images.deleted) == ("canceled", True, [])

    await sweep_once(generations.chores, grace_seconds=60)

    purged = (await generations.reads.get(OWNER, generation.id)).generation
    assert purged.image_purge_pending is False
    assert h.images.deleted == [generation_image_key(generation.id)]
    assert await generations.chores.purge_late_images() == 0  # nothing left to delete


async def test_a_completed_generations_image_is_never_purged(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    await generations.results.apply(*_result(_completed(generation.id)))

    assert await generations.chores.purge_late_images() == 0
    assert h.images.deleted == []


async def test_a_result_for_a_generation_content_never_issued_is_refused_and_not_marked(
    h: Harness, generations: Generations
) -> None:
    for generation_id in (str(uuid.uuid4()), "not-a-uuid"):
        started = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
        with pytest.raises(UnexpectedEventError):
            await generations.results.apply(*_result(started))
    assert await _count(h.sessions, inbox_table) == 0


async def test_an_event_that_is_not_a_result_is_refused(generations: Generations) -> None:
    ready = LoraReady(
        lora_model_id="l",
        avatar_id="a",
        owner_id="o",
        object_key=lora_object_key(SHA),
        sha256=SHA,
        size_bytes=1,
        base_model="b",
    )
    with pytest.raises(UnexpectedEventError):
        await generations.results.apply(*_result(ready))
