"""Content decisions: status moves only forward, who may generate, cancel and time-out, what generation.requested
carries, the steps a generation went through."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts.events import (
    AvatarCreated,
    AvatarUpdated,
    EventType,
    GenerationCompleted,
    GenerationFailed,
    GenerationStarted,
    ImageRef,
    LoraReady,
)
from contracts.object_keys import generation_image_key, lora_object_key
from contracts.worker import ModelInfo, Timings
from services.common.http.errors import ConflictError, NotFoundError
from services.content.decisions import (
    ForgedFieldError,
    StatusStep,
    UnexpectedEventError,
    apply_result,
    avatar_event_applies,
    avatar_is_ready,
    build_generation_requested,
    cancel,
    check_avatar_event,
    check_can_generate,
    check_lora_event,
    is_terminal,
    lora_event_applies,
    seconds_between,
    status_after,
    status_steps,
    time_out,
)
from services.content.models import AvatarProjection, Generation, GenerationStatus, LoraProjection, LoraState
from services.content.schemas import GenerateRequest

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SHA = "ab" * 32
Q, R, C, F, X = (
    GenerationStatus.QUEUED,
    GenerationStatus.RUNNING,
    GenerationStatus.COMPLETED,
    GenerationStatus.FAILED,
    GenerationStatus.CANCELED,
)
STARTED, COMPLETED, FAILED = EventType.GENERATION_STARTED, EventType.GENERATION_COMPLETED, EventType.GENERATION_FAILED


@pytest.mark.parametrize(
    ("current", "event", "expected"),
    [
        (Q, STARTED, R),
        (R, STARTED, None),
        (C, STARTED, None),
        (F, STARTED, None),
        (X, STARTED, None),
        (Q, COMPLETED, C),
        (R, COMPLETED, C),
        (C, COMPLETED, None),
        (F, COMPLETED, None),
        (X, COMPLETED, None),
        (Q, FAILED, F),
        (R, FAILED, F),
        (C, FAILED, None),
        (F, FAILED, None),
        (X, FAILED, None),
    ],
)
def test_status_moves_only_forward_and_terminal_states_stay(
    current: GenerationStatus, event: EventType, expected: GenerationStatus | None
) -> None:
    assert status_after(current, event) == expected


def test_an_event_that_is_not_a_result_has_no_status() -> None:
    with pytest.raises(ValueError, match="not a generation result"):
        status_after(Q, EventType.AVATAR_CREATED)


def _generation(status: GenerationStatus = Q) -> Generation:
    return Generation(
        id=uuid.uuid4(),
        owner_id="o",
        avatar_id="a",
        status=status.value,
        params={},
        seed=1,
        attempts=0,
        created_at=NOW,
        updated_at=NOW,
        deadline=NOW + timedelta(minutes=10),
        image_purge_pending=False,
    )


def _started(generation: Generation, attempt: int = 1) -> GenerationStarted:
    return GenerationStarted(generation_id=str(generation.id), attempt=attempt, worker_mode="sync")


def _completed(generation_id: str) -> GenerationCompleted:
    return GenerationCompleted(
        generation_id=generation_id,
        image=ImageRef(object_key=generation_image_key(generation_id), sha256=SHA, width=64, height=64, size_bytes=100),
        generation_time_seconds=1.5,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=0.8),
        timings=Timings(total_ms=1500.0),
        attempts=2,
    )


def _failed(generation: Generation) -> GenerationFailed:
    return GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="not a LoRA", retryable=False
    )


def test_started_moves_queued_to_running_and_records_when() -> None:
    generation = _generation(Q)
    later = NOW + timedelta(seconds=2)

    assert apply_result(generation, _started(generation), STARTED, later) is True

    assert (generation.status, generation.started_at, generation.finished_at) == ("running", later, None)
    assert generation.attempts == 1


def test_completed_records_the_image_timings_attempts_and_when_it_finished() -> None:
    generation = _generation(R)
    later = NOW + timedelta(seconds=3)

    assert apply_result(generation, _completed(str(generation.id)), COMPLETED, later) is True

    assert generation.status == "completed"
    assert generation.image is not None and generation.image["sha256"] == SHA
    assert generation.generation_time_seconds == 1.5 and generation.attempts == 2
    assert generation.timings is not None and generation.timings["total_ms"] == 1500.0
    assert generation.model_info is not None and generation.model_info["lora_applied"] is True
    assert (generation.updated_at, generation.finished_at) == (later, later)
    assert generation.image_purge_pending is False


def test_a_late_started_after_completed_changes_nothing() -> None:
    generation = _generation(R)
    apply_result(generation, _completed(str(generation.id)), COMPLETED, NOW)

    late = _started(generation, attempt=3)
    assert apply_result(generation, late, STARTED, NOW + timedelta(seconds=9)) is False

    assert (generation.status, generation.attempts, generation.updated_at) == ("completed", 2, NOW)
    assert generation.started_at is None


def test_failed_records_the_error_and_a_later_completed_does_not_undo_it() -> None:
    generation = _generation(Q)

    apply_result(generation, _failed(generation), FAILED, NOW)
    assert apply_result(generation, _completed(str(generation.id)), COMPLETED, NOW + timedelta(seconds=1)) is False

    assert generation.status == "failed" and generation.image is None
    assert generation.finished_at == NOW
    assert generation.error == {
        "error_code": "LORA_LOAD_FAILED",
        "error": "not a LoRA",
        "retryable": False,
        "details": {},
    }


def test_a_second_started_counts_the_attempt_without_changing_the_status_or_the_start() -> None:
    generation = _generation(Q)
    apply_result(generation, _started(generation), STARTED, NOW)

    apply_result(generation, _started(generation, attempt=2), STARTED, NOW + timedelta(seconds=5))

    assert (generation.status, generation.attempts, generation.started_at) == ("running", 2, NOW)


def test_the_same_started_again_changes_nothing_not_even_the_update_time() -> None:
    # A duplicate under another event id (the inbox stops same-id ones): no change notice for watchers.
    generation = _generation(Q)
    apply_result(generation, _started(generation), STARTED, NOW)

    assert apply_result(generation, _started(generation), STARTED, NOW + timedelta(seconds=5)) is False

    assert (generation.status, generation.attempts, generation.updated_at) == ("running", 1, NOW)


def test_a_completed_after_a_cancel_is_recorded_for_deletion_and_the_generation_stays_canceled() -> None:
    generation = _generation(R)
    cancel(generation, NOW)
    later = NOW + timedelta(seconds=4)

    assert apply_result(generation, _completed(str(generation.id)), COMPLETED, later) is True

    assert generation.status == "canceled"
    assert generation.image is not None and generation.image["object_key"] == generation_image_key(generation.id)
    assert generation.image_purge_pending is True
    assert generation.finished_at == NOW  # when it was canceled, not when the image came


def test_a_started_after_a_cancel_leaves_it_canceled_and_never_started() -> None:
    generation = _generation(Q)
    cancel(generation, NOW)

    apply_result(generation, _started(generation), STARTED, NOW + timedelta(seconds=1))

    assert (generation.status, generation.started_at, generation.finished_at) == ("canceled", None, NOW)


def test_a_failed_after_a_cancel_leaves_it_canceled() -> None:
    generation = _generation(R)
    cancel(generation, NOW)

    apply_result(generation, _failed(generation), FAILED, NOW + timedelta(seconds=1))

    assert (generation.status, generation.finished_at) == ("canceled", NOW)


def test_a_payload_that_is_not_a_result_is_refused() -> None:
    payload = LoraReady(
        lora_model_id="l",
        avatar_id="a",
        owner_id="o",
        object_key=lora_object_key(SHA),
        sha256=SHA,
        size_bytes=1,
        base_model="b",
    )
    with pytest.raises(UnexpectedEventError):
        apply_result(_generation(), payload, STARTED, NOW)


@pytest.mark.parametrize("status", [Q, R])
def test_cancel_ends_an_open_generation_at_once(status: GenerationStatus) -> None:
    generation = _generation(status)
    later = NOW + timedelta(seconds=7)

    cancel(generation, later)

    assert (generation.status, generation.finished_at, generation.updated_at) == ("canceled", later, later)
    assert is_terminal(generation)


@pytest.mark.parametrize("status", [C, F, X])
def test_a_finished_generation_cannot_be_canceled(status: GenerationStatus) -> None:
    generation = _generation(status)

    with pytest.raises(ConflictError) as caught:
        cancel(generation, NOW + timedelta(seconds=1))

    assert caught.value.reason_code == "GENERATION_FINISHED"
    assert (generation.status, generation.finished_at, generation.updated_at) == (status.value, None, NOW)


@pytest.mark.parametrize("status", [Q, R])
def test_time_out_fails_an_open_generation_with_timeout(status: GenerationStatus) -> None:
    generation = _generation(status)
    later = NOW + timedelta(minutes=11)

    assert time_out(generation, later) is True

    assert (generation.status, generation.finished_at) == ("failed", later)
    assert generation.error is not None
    assert (generation.error["error_code"], generation.error["retryable"]) == ("TIMEOUT", True)
    assert generation.error["details"] == {"deadline": generation.deadline.isoformat()}


@pytest.mark.parametrize("status", [C, F, X])
def test_time_out_leaves_a_finished_generation_alone(status: GenerationStatus) -> None:
    generation = _generation(status)

    assert time_out(generation, NOW + timedelta(hours=1)) is False

    assert (generation.status, generation.error, generation.updated_at) == (status.value, None, NOW)


def test_status_steps_of_a_queued_generation() -> None:
    assert status_steps(_generation(Q)) == [StatusStep(1, Q, NOW)]


def test_status_steps_number_each_status_in_order_with_its_time() -> None:
    generation = _generation(Q)
    started, finished = NOW + timedelta(seconds=2), NOW + timedelta(seconds=5)
    apply_result(generation, _started(generation), STARTED, started)
    assert status_steps(generation) == [StatusStep(1, Q, NOW), StatusStep(2, R, started)]

    apply_result(generation, _completed(str(generation.id)), COMPLETED, finished)

    assert status_steps(generation) == [StatusStep(1, Q, NOW), StatusStep(2, R, started), StatusStep(3, C, finished)]


def test_a_generation_that_never_ran_skips_the_running_step() -> None:
    generation = _generation(Q)
    cancel(generation, NOW + timedelta(seconds=1))

    assert status_steps(generation) == [StatusStep(1, Q, NOW), StatusStep(3, X, NOW + timedelta(seconds=1))]


def test_a_terminal_step_without_finished_at_uses_the_last_update() -> None:
    generation = _generation(F)  # e.g. a row written before finished_at existed

    assert status_steps(generation)[-1] == StatusStep(3, F, NOW)


def test_seconds_between() -> None:
    assert seconds_between(NOW, NOW + timedelta(seconds=2.5)) == 2.5
    assert seconds_between(NOW, NOW - timedelta(seconds=1)) == 0.0  # clocks of two hosts: never negative
    assert seconds_between(None, NOW) is None
    assert seconds_between(NOW, None) is None


def _avatar(active: str | None = "l1", deleted: bool = False, owner_id: str = "o1") -> AvatarProjection:
    return AvatarProjection(
        id="a1",
        owner_id=owner_id,
        name="Vixen",
        active_lora_id=active,
        deleted=deleted,
        source_time=NOW,
        updated_at=NOW,
    )


def _lora(status: LoraState = LoraState.READY, avatar_id: str = "a1") -> LoraProjection:
    return LoraProjection(
        id="l1",
        avatar_id=avatar_id,
        owner_id="o1",
        object_key=lora_object_key(SHA),
        sha256=SHA,
        size_bytes=1000,
        base_model="sdxl-base-1.0",
        default_scale=0.7,
        status=status.value,
        updated_at=NOW,
    )


def test_the_owners_avatar_with_a_ready_lora_may_generate() -> None:
    avatar, lora = _avatar(), _lora()

    assert check_can_generate("o1", avatar, lora) == (avatar, lora)
    assert avatar_is_ready(avatar, lora)


@pytest.mark.parametrize(
    "avatar",
    [None, _avatar(owner_id="someone-else"), _avatar(deleted=True)],
    ids=["unknown", "someone-elses", "deleted"],
)
def test_an_unknown_foreign_or_deleted_avatar_is_not_found_naming_avatar_id(avatar: AvatarProjection | None) -> None:
    with pytest.raises(NotFoundError, match="unknown avatar") as caught:
        check_can_generate("o1", avatar, _lora())
    assert [f.field for f in caught.value.fields] == ["avatar_id"]


def test_someone_elses_avatar_reads_exactly_like_a_missing_one() -> None:
    with pytest.raises(NotFoundError) as missing:
        check_can_generate("o1", None, None)
    with pytest.raises(NotFoundError) as foreign:
        check_can_generate("o1", _avatar(owner_id="o2"), _lora())

    assert (missing.value.message, missing.value.fields) == (foreign.value.message, foreign.value.fields)


@pytest.mark.parametrize(
    "lora", [None, _lora(LoraState.RETIRED), _lora(avatar_id="someone-else")], ids=["none", "retired", "foreign"]
)
def test_an_avatar_without_a_ready_lora_of_its_own_is_a_conflict_naming_avatar_id(
    lora: LoraProjection | None,
) -> None:
    with pytest.raises(ConflictError) as caught:
        check_can_generate("o1", _avatar(), lora)
    assert [f.field for f in caught.value.fields] == ["avatar_id"]
    assert not avatar_is_ready(_avatar(), lora)


def test_a_deleted_avatar_is_not_ready() -> None:
    assert not avatar_is_ready(_avatar(deleted=True), _lora())


def test_generation_requested_carries_the_lora_by_key_with_the_default_scale_and_the_seed() -> None:
    request = GenerateRequest(avatar_id=uuid.uuid4(), prompt="a portrait", width=512, height=768, steps=4)
    generation_id = uuid.uuid4()

    payload = build_generation_requested(
        generation_id, request, _avatar(), _lora(), seed=42, now=NOW, deadline_seconds=600
    )

    assert payload.generation_id == str(generation_id)
    assert (payload.owner_id, payload.avatar_id) == ("o1", "a1")
    assert payload.lora is not None
    assert payload.lora.model_dump() == {
        "lora_model_id": "l1",
        "object_key": lora_object_key(SHA),
        "sha256": SHA,
        "scale": 0.7,
    }
    assert payload.params.model_dump() == {
        "prompt": "a portrait",
        "negative_prompt": "",
        "width": 512,
        "height": 768,
        "steps": 4,
        "cfg": 5.5,
        "seed": 42,
    }
    assert (payload.requested_at, payload.deadline) == (NOW, NOW + timedelta(seconds=600))


def test_an_explicit_lora_scale_wins_over_the_default_even_when_zero() -> None:
    request = GenerateRequest(avatar_id=uuid.uuid4(), prompt="x", lora_scale=0.0)

    payload = build_generation_requested(uuid.uuid4(), request, _avatar(), _lora(), seed=1, now=NOW, deadline_seconds=1)

    assert payload.lora is not None and payload.lora.scale == 0.0


def test_avatar_events_apply_newest_first_and_deletion_is_final() -> None:
    row = _avatar()
    assert avatar_event_applies(None, EventType.AVATAR_CREATED, NOW)
    assert avatar_event_applies(row, EventType.AVATAR_UPDATED, NOW + timedelta(seconds=1))
    assert avatar_event_applies(row, EventType.AVATAR_UPDATED, NOW)  # same time: identity's order wins
    assert not avatar_event_applies(row, EventType.AVATAR_CREATED, NOW - timedelta(seconds=1))
    assert avatar_event_applies(row, EventType.AVATAR_DELETED, NOW - timedelta(seconds=1))
    assert not avatar_event_applies(_avatar(deleted=True), EventType.AVATAR_UPDATED, NOW + timedelta(days=1))


def test_a_retired_lora_never_becomes_ready_again() -> None:
    assert lora_event_applies(None)
    assert lora_event_applies(_lora())
    assert not lora_event_applies(_lora(LoraState.RETIRED))


def test_a_completed_whose_image_is_not_at_the_generations_key_is_forged_and_changes_nothing() -> None:
    generation = _generation(R)
    elsewhere = _completed(str(generation.id)).model_copy(deep=True)
    elsewhere.image.object_key = lora_object_key(SHA)

    with pytest.raises(ForgedFieldError, match="not the generation's own"):
        apply_result(generation, elsewhere, EventType.GENERATION_COMPLETED, NOW)
    assert generation.status == R.value and generation.image is None


def test_an_avatar_event_may_not_give_a_known_avatar_another_owner() -> None:
    known = _avatar(owner_id="o1")
    check_avatar_event(known, AvatarUpdated(avatar_id="a1", owner_id="o1", name="renamed"))
    check_avatar_event(None, AvatarCreated(avatar_id="a1", owner_id="o2", name="new"))
    with pytest.raises(ForgedFieldError):
        check_avatar_event(known, AvatarUpdated(avatar_id="a1", owner_id="o2", name="mine"))


def _lora_event(**fields: object) -> LoraReady:
    values: dict[str, object] = {
        "lora_model_id": "l1",
        "avatar_id": "a1",
        "owner_id": "o1",
        "object_key": lora_object_key(SHA),
        "sha256": SHA,
        "size_bytes": 1000,
        "base_model": "sdxl-base-1.0",
    } | fields
    return LoraReady.model_validate(values)


def test_a_lora_event_is_checked_against_its_hash_its_avatar_and_what_is_known_of_it() -> None:
    check_lora_event(_lora(), _avatar(), _lora_event())
    check_lora_event(None, None, _lora_event())  # its avatar not known yet: admission checks the owners later
    forged = {
        "an upload's key": (None, _avatar(), _lora_event(object_key="uploads/loras/a1/l1.safetensors")),
        "another file's address": (None, _avatar(), _lora_event(object_key=lora_object_key("cd" * 32))),
        "another owner than the avatar's": (None, _avatar(owner_id="o1"), _lora_event(owner_id="o2")),
        "a known LoRA moved to another avatar": (_lora(), None, _lora_event(avatar_id="a2")),
    }
    for case, (row, avatar, event) in forged.items():
        with pytest.raises(ForgedFieldError):
            check_lora_event(row, avatar, event)
            pytest.fail(f"accepted {case}")


def test_a_lora_of_another_owner_never_makes_an_avatar_ready() -> None:
    lora = _lora()
    lora.owner_id = "o2"
    with pytest.raises(ConflictError):
        check_can_generate("o1", _avatar(), lora)
