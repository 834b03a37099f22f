"""How a generation ends: cancel, worker results, inbox duplicates, late events, and purging late images."""

from __future__ import annotations

import uuid

import pytest

from contracts.events import GenerationCanceled, GenerationFailed, GenerationRequested, GenerationStarted, LoraReady
from contracts.object_keys import generation_image_key, lora_object_key
from services.common.http_errors import ConflictError, NotFoundError
from services.content.decisions import UnexpectedEventError, status_steps
from services.content.generations import GenerationService
from services.content.models import inbox_table, outbox_table
from services.content.sweeper import sweep_once
from tests.support.content_harness import (
    OTHER,
    OWNER,
    SHA,
    Harness,
    _completed,
    _count,
    _outbox,
    _ready_avatar,
    _result,
    _started,
    _submit,
)
from tests.support.content_units import T0

# --- cancel -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("running", [False, True], ids=["queued", "running"])
async def test_cancel_ends_an_open_generation_and_emits_one_generation_canceled(h: Harness, running: bool) -> None:
    service = h.service()
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    if running:
        await service.apply_result(*_result(_started(generation.id)))
    commits = len(h.commits)
    canceled_at = h.clock.advance(5)

    view = await service.cancel(OWNER, generation.id)

    assert (view.generation.status, view.generation.finished_at) == ("canceled", canceled_at)
    assert (await service.get(OWNER, generation.id)).generation.status == "canceled"
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
async def test_a_finished_generation_cannot_be_canceled(h: Harness, service: GenerationService, end: str) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    if end == "completed":
        await service.apply_result(*_result(_completed(generation.id)))
    elif end == "failed":
        failed = GenerationFailed(generation_id=str(generation.id), error_code="CUDA_OOM", error="oom", retryable=True)
        await service.apply_result(*_result(failed))
    else:
        await service.cancel(OWNER, generation.id)
    outbox = await _count(h.sessions, outbox_table)

    with pytest.raises(ConflictError):
        await service.cancel(OWNER, generation.id)

    assert (await service.get(OWNER, generation.id)).generation.status == end
    assert await _count(h.sessions, outbox_table) == outbox


async def test_cancel_of_someone_elses_generation_is_a_404_and_changes_nothing(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    for owner_id, generation_id in ((OTHER, generation.id), (OWNER, uuid.uuid4())):
        with pytest.raises(NotFoundError):
            await service.cancel(owner_id, generation_id)

    assert (await service.get(OWNER, generation.id)).generation.status == "queued"
    assert await _count(h.sessions, outbox_table) == 1


# --- results ----------------------------------------------------------------------------------------------------


async def test_results_move_the_generation_forward_and_record_when(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    started_at = h.clock.advance(2)
    await service.apply_result(*_result(_started(generation.id)))
    running = (await service.get(OWNER, generation.id)).generation
    finished_at = h.clock.advance(3)
    await service.apply_result(*_result(_completed(generation.id, attempts=2)))
    done = (await service.get(OWNER, generation.id)).generation

    assert (running.status, running.started_at, running.finished_at) == ("running", started_at, None)
    assert (done.status, done.started_at, done.finished_at) == ("completed", started_at, finished_at)
    assert (done.attempts, done.generation_time_seconds) == (2, 0.5)
    assert done.timings is not None and done.timings["total_ms"] == 500.0
    assert done.image is not None and done.image["object_key"] == generation_image_key(generation.id)


async def test_a_result_applied_before_its_start_still_records_when_the_generation_started(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    attempt_began = h.clock.advance(1)
    finished_at = h.clock.advance(3)

    completed = _completed(generation.id).model_copy(update={"started_at": attempt_began})
    await service.apply_result(*_result(completed))
    await service.apply_result(*_result(_started(generation.id)))  # overtaken: changes nothing
    done = (await service.get(OWNER, generation.id)).generation

    assert (done.status, done.started_at, done.finished_at) == ("completed", attempt_began, finished_at)
    assert [step.status for step in status_steps(done)] == ["queued", "running", "completed"]


async def test_a_result_without_a_start_time_leaves_the_start_unknown(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)

    await service.apply_result(*_result(_completed(generation.id)))
    done = (await service.get(OWNER, generation.id)).generation

    assert (done.status, done.started_at) == ("completed", None)
    assert [step.status for step in status_steps(done)] == ["queued", "completed"]


async def test_a_failed_result_records_the_error(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    failed = GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="not a LoRA", retryable=False
    )

    await service.apply_result(*_result(failed))

    stored = (await service.get(OWNER, generation.id)).generation
    assert stored.status == "failed" and stored.error is not None
    assert (stored.error["error_code"], stored.error["retryable"]) == ("LORA_LOAD_FAILED", False)
    assert stored.finished_at == T0


async def test_the_same_result_event_twice_is_applied_once(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    envelope, payload = _result(_completed(generation.id))
    await service.apply_result(envelope, payload)
    before = (await service.get(OWNER, generation.id)).generation
    inbox = await _count(h.sessions, inbox_table)
    h.clock.advance(60)

    with h.hub.watch(str(generation.id)) as watch:
        await service.apply_result(envelope, payload)
        assert not await watch.changed(0)

    after = (await service.get(OWNER, generation.id)).generation
    assert (after.status, after.updated_at, after.finished_at) == ("completed", before.updated_at, before.finished_at)
    assert await _count(h.sessions, inbox_table) == inbox


async def test_a_redelivered_started_is_applied_once(h: Harness, service: GenerationService) -> None:
    # A second started of the same attempt would still touch the row (updated_at) and wake waiters: only the
    # inbox stops it.
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    envelope, payload = _result(_started(generation.id))
    await service.apply_result(envelope, payload)
    before = (await service.get(OWNER, generation.id)).generation
    h.clock.advance(60)

    with h.hub.watch(str(generation.id)) as watch:
        await service.apply_result(envelope, payload)
        assert not await watch.changed(0)

    after = (await service.get(OWNER, generation.id)).generation
    assert (after.status, after.updated_at, after.started_at) == ("running", before.updated_at, before.started_at)


async def test_a_redelivered_late_completed_deletes_its_image_once(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.cancel(OWNER, generation.id)
    envelope, payload = _result(_completed(generation.id))

    await service.apply_result(envelope, payload)
    await service.apply_result(envelope, payload)

    assert h.images.deleted == [generation_image_key(generation.id)]


async def test_a_late_started_after_completed_changes_nothing(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.apply_result(*_result(_completed(generation.id)))
    h.clock.advance(30)

    with h.hub.watch(str(generation.id)) as watch:
        await service.apply_result(*_result(_started(generation.id, attempt=3)))
        assert not await watch.changed(0)

    stored = (await service.get(OWNER, generation.id)).generation
    assert (stored.status, stored.started_at, stored.attempts, stored.updated_at) == ("completed", None, 1, T0)


async def test_a_completed_after_cancel_keeps_it_canceled_and_deletes_the_image(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.cancel(OWNER, generation.id)

    await service.apply_result(*_result(_completed(generation.id)))

    view = await service.get(OWNER, generation.id)
    assert view.generation.status == "canceled" and view.image_url is None
    assert h.images.deleted == [generation_image_key(generation.id)]
    assert view.generation.image_purge_pending is False
    assert h.images.signed == []


async def test_an_image_that_cannot_be_deleted_now_is_deleted_by_the_sweeper(
    h: Harness, service: GenerationService
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.cancel(OWNER, generation.id)
    h.images.failing_deletes = 1

    await service.apply_result(*_result(_completed(generation.id)))  # applied all the same

    pending = (await service.get(OWNER, generation.id)).generation
    assert (pending.status, pending.image_purge_pending, h.images.deleted) == ("canceled", True, [])

    await sweep_once(service, grace_seconds=60)

    purged = (await service.get(OWNER, generation.id)).generation
    assert purged.image_purge_pending is False
    assert h.images.deleted == [generation_image_key(generation.id)]
    assert await service.purge_late_images() == 0  # nothing left to delete


async def test_a_completed_generations_image_is_never_purged(h: Harness, service: GenerationService) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(service, avatar_id)
    await service.apply_result(*_result(_completed(generation.id)))

    assert await service.purge_late_images() == 0
    assert h.images.deleted == []


async def test_a_result_for_a_generation_content_never_issued_is_refused_and_not_marked(
    h: Harness, service: GenerationService
) -> None:
    for generation_id in (str(uuid.uuid4()), "not-a-uuid"):
        started = GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync")
        with pytest.raises(UnexpectedEventError):
            await service.apply_result(*_result(started))
    assert await _count(h.sessions, inbox_table) == 0


async def test_an_event_that_is_not_a_result_is_refused(service: GenerationService) -> None:
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
        await service.apply_result(*_result(ready))
