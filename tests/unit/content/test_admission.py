"""Admission (pure): the configured bounds and cost budget, the owner's token bucket, the in-flight cap, and the
digest that tells an idempotent retry from a different request."""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.http.errors import InvalidRequestError, TooManyRequestsError
from services.content.admission import (
    IN_FLIGHT_RETRY_AFTER_SECONDS,
    RATE_LIMITED,
    TOO_MANY_IN_FLIGHT,
    AdmissionLimits,
    check_in_flight,
    check_rate,
    check_request_fits,
    refilled_tokens,
    request_digest,
)
from services.content.main import admission_limits
from services.content.schemas import GenerateRequest
from services.content.settings import AdmissionSettings
from tests.support.settings_env import settings_env

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AVATAR = uuid.uuid4()
LIMITS = AdmissionLimits(
    min_side=256,
    max_side=1536,
    max_steps=60,
    max_pixel_steps=1024 * 1024 * 50,
    max_in_flight=3,
    rate_per_minute=6.0,  # one token every 10 s
    burst=4,
    idempotency_ttl_seconds=3600,
)


@pytest.fixture
def default_limits(monkeypatch: pytest.MonkeyPatch) -> AdmissionLimits:
    """The limits of a deployment that configured none."""
    settings_env(monkeypatch, AdmissionSettings, {})
    return admission_limits(AdmissionSettings())


def _request(**fields: Any) -> GenerateRequest:
    return GenerateRequest.model_validate({"avatar_id": str(AVATAR), "prompt": "a portrait", **fields})


def _refused_fields(request: GenerateRequest, limits: AdmissionLimits) -> list[str]:
    with pytest.raises(InvalidRequestError) as caught:
        check_request_fits(request, limits)
    assert caught.value.status_code == 422
    return [f.field for f in caught.value.fields]


def test_the_default_budget_refuses_the_largest_request_the_worker_would_take(default_limits: AdmissionLimits) -> None:
    request = _request(width=2048, height=2048, steps=100)

    with pytest.raises(InvalidRequestError, match="cost budget") as caught:
        check_request_fits(request, default_limits)

    assert [f.field for f in caught.value.fields] == ["width", "height", "steps"]
    assert all("419,430,400" in f.reason for f in caught.value.fields)  # the cost it would have had


@pytest.mark.parametrize("steps", [28, 50])
def test_the_default_budget_takes_sdxls_usual_request(default_limits: AdmissionLimits, steps: int) -> None:
    check_request_fits(_request(width=1024, height=1024, steps=steps), default_limits)


def test_one_step_over_the_budget_is_refused(default_limits: AdmissionLimits) -> None:
    assert _refused_fields(_request(width=1024, height=1024, steps=51), default_limits) == ["width", "height", "steps"]


def test_the_default_bounds_are_the_workers(default_limits: AdmissionLimits) -> None:
    assert (default_limits.min_side, default_limits.max_side, default_limits.max_steps) == (64, 2048, 100)
    assert default_limits.max_pixel_steps == 1024 * 1024 * 50
    check_request_fits(_request(width=64, height=64, steps=100), default_limits)


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"width": 248}, ["width"]),
        ({"height": 1544}, ["height"]),
        ({"width": 128, "height": 2048}, ["width", "height"]),
        ({"steps": 61}, ["steps"]),
        ({"width": 248, "steps": 61}, ["width", "steps"]),
    ],
)
def test_configured_bounds_refuse_each_field_outside_them(fields: dict[str, int], refused: list[str]) -> None:
    request = _request(**{"width": 512, "height": 512, "steps": 20, **fields})

    assert _refused_fields(request, LIMITS) == refused


@pytest.mark.parametrize(
    "fields",
    [{"width": 256, "height": 256}, {"width": 1536, "height": 1024, "steps": 30}, {"steps": 60}],
)
def test_configured_bounds_are_inclusive(fields: dict[str, int]) -> None:
    check_request_fits(_request(**{"width": 512, "height": 512, "steps": 20, **fields}), LIMITS)


def test_a_request_inside_every_bound_can_still_be_over_a_small_budget() -> None:
    tight = dataclasses.replace(LIMITS, max_pixel_steps=512 * 512 * 20)

    check_request_fits(_request(width=512, height=512, steps=20), tight)
    assert _refused_fields(_request(width=512, height=520, steps=20), tight) == ["width", "height", "steps"]


def test_the_bucket_refills_at_the_rate_and_stops_at_the_burst() -> None:
    assert refilled_tokens(0.0, T0, T0, LIMITS) == 0.0
    assert refilled_tokens(0.0, T0, T0 + timedelta(seconds=10), LIMITS) == pytest.approx(1.0)
    assert refilled_tokens(0.5, T0, T0 + timedelta(seconds=15), LIMITS) == pytest.approx(2.0)
    assert refilled_tokens(2.0, T0, T0 + timedelta(hours=1), LIMITS) == 4.0  # LIMITS.burst
    assert refilled_tokens(4.0, T0, T0 + timedelta(seconds=1), LIMITS) == 4.0


def test_a_clock_that_steps_back_adds_no_tokens_and_takes_none() -> None:
    assert refilled_tokens(1.5, T0, T0 - timedelta(minutes=5), LIMITS) == 1.5


@pytest.mark.parametrize("tokens", [1.0, 1.01, 4.0])
def test_a_bucket_with_a_token_lets_a_submit_through(tokens: float) -> None:
    check_rate(tokens, LIMITS)


@pytest.mark.parametrize(
    ("tokens", "retry_after"),
    [
        (0.0, 10),  # a whole token at one every 10 s
        (0.5, 5),
        (0.95, 1),  # 0.5 s, rounded up
        (0.999, 1),  # never "Retry-After: 0"
    ],
)
def test_an_empty_bucket_is_a_429_saying_when_a_token_will_be_there(tokens: float, retry_after: int) -> None:
    with pytest.raises(TooManyRequestsError) as caught:
        check_rate(tokens, LIMITS)

    error = caught.value
    assert (error.status_code, error.reason_code) == (429, RATE_LIMITED)
    assert error.reason_code == "SUBMIT_RATE_LIMITED"
    assert error.headers == {"Retry-After": str(retry_after)}


def test_retry_after_is_when_the_refill_makes_a_token() -> None:
    tokens = 0.3
    with pytest.raises(TooManyRequestsError) as caught:
        check_rate(tokens, LIMITS)
    wait = int(caught.value.headers["Retry-After"])

    check_rate(refilled_tokens(tokens, T0, T0 + timedelta(seconds=wait), LIMITS), LIMITS)
    assert math.isclose(refilled_tokens(tokens, T0, T0 + timedelta(seconds=wait - 1), LIMITS), 0.3 + (wait - 1) / 10)
    with pytest.raises(TooManyRequestsError):
        check_rate(refilled_tokens(tokens, T0, T0 + timedelta(seconds=wait - 1), LIMITS), LIMITS)


def test_in_flight_below_the_cap_is_admitted_and_at_the_cap_refused() -> None:
    check_in_flight(0, LIMITS)
    check_in_flight(LIMITS.max_in_flight - 1, LIMITS)

    with pytest.raises(TooManyRequestsError) as caught:
        check_in_flight(LIMITS.max_in_flight, LIMITS)

    assert (caught.value.status_code, caught.value.reason_code) == (429, TOO_MANY_IN_FLIGHT)
    assert caught.value.reason_code == "TOO_MANY_IN_FLIGHT"
    assert caught.value.headers == {"Retry-After": str(IN_FLIGHT_RETRY_AFTER_SECONDS)}


def test_the_digest_ignores_key_order_and_spelled_out_defaults() -> None:
    short = GenerateRequest.model_validate({"prompt": "a portrait", "avatar_id": str(AVATAR)})
    spelled = GenerateRequest.model_validate(
        {
            "width": 1024,
            "avatar_id": str(AVATAR),
            "steps": 28.0,
            "negative_prompt": "",
            "prompt": "a portrait",
            "height": 1024,
            "cfg": 5.5,
            "seed": None,
            "lora_scale": None,
        }
    )

    assert request_digest(short) == request_digest(spelled)
    assert len(request_digest(short)) == 64 and int(request_digest(short), 16) >= 0


def test_the_digest_sees_the_normalised_text() -> None:
    assert request_digest(_request(prompt="cafe\u0301")) == request_digest(_request(prompt="caf\u00e9"))


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"prompt": "a portrait "},
        {"prompt": "another portrait"},
        {"negative_prompt": "blurry"},
        {"width": 512},
        {"cfg": 6.0},
        {"lora_scale": 0.5},
        {"avatar_id": str(uuid.uuid4())},
    ],
)
def test_the_digest_differs_for_a_different_request(change: dict[str, Any]) -> None:
    assert request_digest(_request(seed=None)) != request_digest(_request(**change))


def test_the_digest_tells_seed_zero_from_no_seed() -> None:
    assert request_digest(_request(seed=0)) != request_digest(_request())
