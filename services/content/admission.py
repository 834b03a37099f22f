"""Admission decisions (pure): what a submit may ask for, the owner's token bucket, and the idempotency digest."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime

from services.common.http_errors import FieldError, InvalidRequestError, TooManyRequestsError
from services.content.schemas import GenerateRequest

RATE_LIMITED = "SUBMIT_RATE_LIMITED"
TOO_MANY_IN_FLIGHT = "TOO_MANY_IN_FLIGHT"
# No one can say when a generation in flight ends; a few seconds is the usual time of one at 1024².
IN_FLIGHT_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class AdmissionLimits:
    """The deployment's bounds on one submit and on each owner (from AdmissionSettings)."""

    min_side: int
    max_side: int
    max_steps: int
    max_pixel_steps: int
    max_in_flight: int
    rate_per_minute: float
    burst: int
    idempotency_ttl_seconds: int


def check_request_fits(request: GenerateRequest, limits: AdmissionLimits) -> None:
    """Refuse sizes and steps outside the configured bounds, and a request over the cost budget (422)."""
    fields: list[FieldError] = []
    for name in ("width", "height"):
        value = getattr(request, name)
        if not limits.min_side <= value <= limits.max_side:
            fields.append(FieldError(name, f"must be between {limits.min_side} and {limits.max_side}"))
    if request.steps > limits.max_steps:
        fields.append(FieldError("steps", f"must be at most {limits.max_steps}"))
    if fields:
        raise InvalidRequestError("the request is outside this deployment's bounds", fields=fields)
    cost = request.width * request.height * request.steps
    if cost > limits.max_pixel_steps:
        reason = (
            f"width × height × steps is {cost:,}, over this deployment's budget of {limits.max_pixel_steps:,}: "
            "ask for fewer steps or a smaller image"
        )
        raise InvalidRequestError(
            "the request is over the cost budget",
            fields=[FieldError(name, reason) for name in ("width", "height", "steps")],
        )


def refilled_tokens(tokens: float, refilled_at: datetime, now: datetime, limits: AdmissionLimits) -> float:
    """The bucket's tokens now: what it held plus what the rate added since, at most `burst`."""
    elapsed = max(0.0, (now - refilled_at).total_seconds())
    return min(float(limits.burst), tokens + elapsed * limits.rate_per_minute / 60.0)


def check_rate(tokens: float, limits: AdmissionLimits) -> None:
    """Refuse a submit when the bucket holds less than one token (429, Retry-After: when it will)."""
    if tokens >= 1.0:
        return
    wait = math.ceil((1.0 - tokens) * 60.0 / limits.rate_per_minute)
    raise TooManyRequestsError(
        f"too many submits: at most {limits.burst} at once, then {limits.rate_per_minute:g} a minute",
        reason_code=RATE_LIMITED,
        retry_after_seconds=wait,
    )


def check_in_flight(in_flight: int, limits: AdmissionLimits) -> None:
    """Refuse a submit when the owner already has the most generations queued or running that it may."""
    if in_flight < limits.max_in_flight:
        return
    raise TooManyRequestsError(
        f"{in_flight} generations are queued or running; at most {limits.max_in_flight} may be",
        reason_code=TOO_MANY_IN_FLIGHT,
        retry_after_seconds=IN_FLIGHT_RETRY_AFTER_SECONDS,
    )


def request_digest(request: GenerateRequest) -> str:
    """sha256 of the request as validated (defaults filled in, normalised text): two bodies that ask for the same
    generation have the same digest, whatever their key order or spacing."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
