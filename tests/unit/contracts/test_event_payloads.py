"""Event payload models: fields, validation, forward compatibility, type mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import (
    EVENT_PAYLOADS,
    AvatarCreated,
    EventType,
    GenerationCanceled,
    GenerationCompleted,
    GenerationFailed,
    GenerationParams,
    GenerationRequested,
    LoraReady,
    event_type_of,
)

SHA = "a" * 64


def _requested(**overrides: object) -> GenerationRequested:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "generation_id": "g1",
        "owner_id": "o1",
        "avatar_id": "a1",
        "lora": {"lora_model_id": "l1", "object_key": "loras/l1.safetensors", "sha256": SHA, "scale": 0.8},
        "params": {"prompt": "a cat", "width": 512, "height": 512, "steps": 4, "cfg": 5.0, "seed": 7},
        "requested_at": now,
        "deadline": now + timedelta(minutes=10),
    }
    fields.update(overrides)
    return GenerationRequested.model_validate(fields)


def test_every_event_type_has_a_payload_model_and_back() -> None:
    assert set(EVENT_PAYLOADS) == set(EventType)
    for event_type, model in EVENT_PAYLOADS.items():
        assert model.model_fields["schema_version"].default == 1
        assert event_type.value.count(".") == 1
    assert event_type_of(AvatarCreated(avatar_id="a", owner_id="o", name="n")) is EventType.AVATAR_CREATED


def test_generation_requested_without_lora_and_with_defaults() -> None:
    event = _requested(lora=None)
    assert event.lora is None
    assert event.schema_version == 1
    params = GenerationParams(prompt="x")
    assert (params.width, params.height, params.negative_prompt) == (1024, 1024, "")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        _requested(requested_at=datetime(2026, 1, 1, 12, 0))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = _requested().model_dump(mode="json")
    data["added_in_v2"] = {"anything": True}
    data["params"]["new_knob"] = 3
    data["schema_version"] = 2
    event = GenerationRequested.model_validate(data)
    assert event.schema_version == 2
    assert "added_in_v2" not in event.model_dump()


@pytest.mark.parametrize("code", [*WorkerErrorCode, *GatewayErrorCode])
def test_generation_failed_accepts_worker_and_gateway_codes(code: str) -> None:
    failed = GenerationFailed(generation_id="g", error_code=code, error="boom", retryable=False)
    assert failed.model_dump(mode="json")["error_code"] == str(code)


def test_generation_failed_refuses_unknown_code() -> None:
    with pytest.raises(ValidationError, match="unknown error_code"):
        GenerationFailed(generation_id="g", error_code="OOPS", error="boom")


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        _requested(params={"prompt": "x", "width": 100})  # not a multiple of 8
    with pytest.raises(ValidationError):
        LoraReady(
            lora_model_id="l",
            avatar_id="a",
            owner_id="o",
            object_key="k",
            sha256="not-hex",
            size_bytes=1,
            base_model="sdxl",
        )


def test_generation_completed_round_trips_through_json() -> None:
    completed = GenerationCompleted.model_validate(
        {
            "generation_id": "g",
            "image": {"object_key": "outputs/g.png", "sha256": SHA, "width": 64, "height": 64, "size_bytes": 10},
            "generation_time_seconds": 0.3,
            "model_info": {"base_model": "tiny-sdxl", "lora_applied": True, "lora_scale": 0.8},
            "timings": {"denoise_ms": 200.0, "lora_source": "download"},
            "attempts": 2,
        }
    )
    assert GenerationCompleted.model_validate_json(completed.model_dump_json()) == completed
    assert completed.image.content_type == "image/png"


def _canceled_fields() -> dict[str, object]:
    return {
        "generation_id": "g1",
        "owner_id": "o1",
        "avatar_id": "a1",
        "canceled_at": datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
    }


def test_generation_canceled_round_trips_with_its_default_reason() -> None:
    canceled = GenerationCanceled.model_validate(_canceled_fields())
    assert canceled.reason == "canceled by its owner"
    assert canceled.schema_version == 1
    assert GenerationCanceled.model_validate_json(canceled.model_dump_json()) == canceled
    assert event_type_of(canceled) is EventType.GENERATION_CANCELED
    assert EventType.GENERATION_CANCELED.value == "generation.canceled"
    assert EVENT_PAYLOADS[EventType.GENERATION_CANCELED] is GenerationCanceled


@pytest.mark.parametrize("missing", ["generation_id", "owner_id", "avatar_id", "canceled_at"])
def test_generation_canceled_requires_its_ids_and_time(missing: str) -> None:
    fields = _canceled_fields()
    del fields[missing]
    with pytest.raises(ValidationError, match=missing):
        GenerationCanceled.model_validate(fields)


def test_generation_canceled_bounds_its_reason_and_refuses_naive_times() -> None:
    assert GenerationCanceled.model_validate({**_canceled_fields(), "reason": "x" * 500}).reason == "x" * 500
    with pytest.raises(ValidationError, match="at most 500"):
        GenerationCanceled.model_validate({**_canceled_fields(), "reason": "x" * 501})
    with pytest.raises(ValidationError, match="timezone"):
        GenerationCanceled.model_validate({**_canceled_fields(), "canceled_at": datetime(2030, 1, 1, 12, 0)})
