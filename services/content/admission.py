"""Admission decisions (pure): what a submit may ask for, the owner's token bucket, and the idempotency digest."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime

from contracts.budget import GenerationBudget, budget_refusal
from services.common.http.errors import FieldError, InvalidRequestError, TooManyRequestsError
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

    @property
    def budget(self) -> GenerationBudget:
        """The bounds on one generation, as the gateway checks them too."""
        return GenerationBudget(self.min_side, self.max_side, self.max_steps, self.max_pixel_steps)


def check_request_fits(request: GenerateRequest, limits: AdmissionLimits) -> None:
    """Refuse sizes and steps outside the configured bounds, and a request over the cost budget (422)."""
    refusal = budget_refusal(request.width, request.height, request.steps, limits.budget)
    if refusal is not None:
        raise InvalidRequestError(refusal.message, fields=[FieldError(name, reason) for name, reason in refusal.fields])


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
