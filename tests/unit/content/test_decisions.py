"""Content decisions: status moves only forward, who may generate, what generation.requested carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts.events import (
    EventType,
    GenerationCompleted,
    GenerationFailed,
    GenerationStarted,
    ImageRef,
    LoraReady,
)
from contracts.worker import ModelInfo, Timings
from services.common.http_errors import ConflictError, InvalidRequestError
from services.content.models import AvatarProjection, Generation, GenerationStatus, LoraProjection, LoraState
from services.content.schemas import GenerateRequest
from services.content.service import (
    UnexpectedEventError,
    apply_result,
    avatar_event_applies,
    build_generation_requested,
    check_can_generate,
    lora_event_applies,
    status_after,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SHA = "ab" * 32
Q, R, C, F = GenerationStatus.QUEUED, GenerationStatus.RUNNING, GenerationStatus.COMPLETED, GenerationStatus.FAILED
STARTED, COMPLETED, FAILED = EventType.GENERATION_STARTED, EventType.GENERATION_COMPLETED, EventType.GENERATION_FAILED


@pytest.mark.parametrize(
    ("current", "event", "expected"),
    [
        (Q, STARTED, R),
        (R, STARTED, None),
        (C, STARTED, None),
        (F, STARTED, None),
        (Q, COMPLETED, C),
        (R, COMPLETED, C),
        (C, COMPLETED, None),
        (F, COMPLETED, None),
        (Q, FAILED, F),
        (R, FAILED, F),
        (C, FAILED, None),
        (F, FAILED, None),
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
    )


def _completed(generation_id: str) -> GenerationCompleted:
    return GenerationCompleted(
        generation_id=generation_id,
        image=ImageRef(object_key=f"outputs/{generation_id}.png", sha256=SHA, width=64, height=64, size_bytes=100),
        generation_time_seconds=1.5,
        model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=0.8),
        timings=Timings(total_ms=1500.0),
        attempts=2,
    )


def test_completed_records_the_image_timings_and_attempts() -> None:
    generation = _generation(R)
    later = NOW + timedelta(seconds=3)

    assert apply_result(generation, _completed(str(generation.id)), COMPLETED, later) is True

    assert generation.status == "completed"
    assert generation.image is not None and generation.image["sha256"] == SHA
    assert generation.generation_time_seconds == 1.5 and generation.attempts == 2
    assert generation.timings is not None and generation.timings["total_ms"] == 1500.0
    assert generation.updated_at == later


def test_a_late_started_after_completed_changes_nothing() -> None:
    generation = _generation(R)
    apply_result(generation, _completed(str(generation.id)), COMPLETED, NOW)

    late = GenerationStarted(generation_id=str(generation.id), attempt=3, worker_mode="sync")
    assert apply_result(generation, late, STARTED, NOW + timedelta(seconds=9)) is False

    assert (generation.status, generation.attempts, generation.updated_at) == ("completed", 2, NOW)


def test_failed_records_the_error_and_a_later_completed_does_not_undo_it() -> None:
    generation = _generation(Q)
    failed = GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="not a LoRA", retryable=False
    )

    apply_result(generation, failed, FAILED, NOW)
    assert apply_result(generation, _completed(str(generation.id)), COMPLETED, NOW) is False

    assert generation.status == "failed" and generation.image is None
    assert generation.error == {
        "error_code": "LORA_LOAD_FAILED",
        "error": "not a LoRA",
        "retryable": False,
        "details": {},
    }


def test_a_second_started_counts_the_attempt_without_changing_the_status() -> None:
    generation = _generation(R)

    apply_result(
        generation, GenerationStarted(generation_id=str(generation.id), attempt=2, worker_mode="sync"), STARTED, NOW
    )

    assert (generation.status, generation.attempts) == ("running", 2)


def test_a_payload_that_is_not_a_result_is_refused() -> None:
    payload = LoraReady(
        lora_model_id="l", avatar_id="a", owner_id="o", object_key="k", sha256=SHA, size_bytes=1, base_model="b"
    )
    with pytest.raises(UnexpectedEventError):
        apply_result(_generation(), payload, STARTED, NOW)


def _avatar(active: str | None = "l1", deleted: bool = False) -> AvatarProjection:
    return AvatarProjection(
        id="a1", owner_id="o1", name="Vixen", active_lora_id=active, deleted=deleted, source_time=NOW, updated_at=NOW
    )


def _lora(status: LoraState = LoraState.READY, avatar_id: str = "a1") -> LoraProjection:
    return LoraProjection(
        id="l1",
        avatar_id=avatar_id,
        owner_id="o1",
        object_key="loras/a1/l1.safetensors",
        sha256=SHA,
        size_bytes=1000,
        base_model="sdxl-base-1.0",
        default_scale=0.7,
        status=status.value,
        updated_at=NOW,
    )


def test_an_unknown_avatar_is_an_invalid_request_naming_avatar_id() -> None:
    with pytest.raises(InvalidRequestError, match="unknown avatar") as caught:
        check_can_generate("a1", None, None)
    assert [(f.field, f.reason) for f in caught.value.fields] == [("avatar_id", "unknown avatar")]


def test_a_deleted_avatar_is_an_invalid_request_naming_avatar_id() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_can_generate("a1", _avatar(deleted=True), _lora())
    assert [f.field for f in caught.value.fields] == ["avatar_id"]


@pytest.mark.parametrize(
    "lora", [None, _lora(LoraState.RETIRED), _lora(avatar_id="someone-else")], ids=["none", "retired", "foreign"]
)
def test_an_avatar_without_a_ready_lora_of_its_own_is_a_conflict(lora: LoraProjection | None) -> None:
    with pytest.raises(ConflictError):
        check_can_generate("a1", _avatar(), lora)


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
        "object_key": "loras/a1/l1.safetensors",
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
    assert not avatar_event_applies(row, EventType.AVATAR_CREATED, NOW - timedelta(seconds=1))
    assert avatar_event_applies(row, EventType.AVATAR_DELETED, NOW - timedelta(seconds=1))
    assert not avatar_event_applies(_avatar(deleted=True), EventType.AVATAR_UPDATED, NOW + timedelta(days=1))


def test_a_retired_lora_never_becomes_ready_again() -> None:
    assert lora_event_applies(None)
    assert lora_event_applies(_lora())
    assert not lora_event_applies(_lora(LoraState.RETIRED))
