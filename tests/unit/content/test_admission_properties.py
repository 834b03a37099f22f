"""Properties of content's admission rules: what is admitted is within the bounds and the cost budget, what is
refused names the fields at fault, the token bucket never exceeds its burst and its Retry-After is honest."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.http.errors import InvalidRequestError, TooManyRequestsError
from services.content.admission import (
    AdmissionLimits,
    check_in_flight,
    check_rate,
    check_request_fits,
    refilled_tokens,
    request_digest,
)
from services.content.schemas import GenerateRequest
from tests.support.properties import bounded

AVATAR = uuid.UUID(int=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# The schema's own bounds (the worker contract's): a deployment narrows them.
sides = st.integers(8, 256).map(lambda n: n * 8)
steps = st.integers(1, 100)


@st.composite
def limits(draw: st.DrawFn) -> AdmissionLimits:
    low, high = sorted((draw(sides), draw(sides)))
    return AdmissionLimits(
        min_side=low,
        max_side=high,
        max_steps=draw(steps),
        max_pixel_steps=draw(st.integers(1, 2048 * 2048 * 100)),
        max_in_flight=draw(st.integers(1, 50)),
        rate_per_minute=draw(st.floats(0.1, 6000)),
        burst=draw(st.integers(1, 100)),
        idempotency_ttl_seconds=3600,
    )


requests = st.builds(
    GenerateRequest, avatar_id=st.just(AVATAR), prompt=st.just("a cat"), width=sides, height=sides, steps=steps
)


@bounded(400)
@given(request=requests, bounds=limits())
def test_admitted_requests_are_within_bounds_and_refusals_name_the_fields_at_fault(
    request: GenerateRequest, bounds: AdmissionLimits
) -> None:
    # Guards: a request outside a bound or over the budget let through (a GPU run the deployment cannot afford),
    # or a refusal that blames a field that is fine or omits the one at fault.
    out_of_bounds = {
        name
        for name, ok in (
            ("width", bounds.min_side <= request.width <= bounds.max_side),
            ("height", bounds.min_side <= request.height <= bounds.max_side),
            ("steps", request.steps <= bounds.max_steps),
        )
        if not ok
    }
    over_budget = request.width * request.height * request.steps > bounds.max_pixel_steps
    try:
        check_request_fits(request, bounds)
    except InvalidRequestError as refusal:
        named = {field.field for field in refusal.fields}
        assert named == (out_of_bounds or {"width", "height", "steps"})
        assert out_of_bounds or over_budget
    else:
        assert not out_of_bounds and not over_budget


@bounded()
@given(
    bounds=limits(),
    tokens=st.floats(0, 100),
    elapsed=st.floats(0, 7200),
    later=st.floats(0, 7200),
)
def test_the_bucket_holds_at_most_its_burst_and_only_fills_with_time(
    bounds: AdmissionLimits, tokens: float, elapsed: float, later: float
) -> None:
    # Guards: a bucket that overflows its burst (more submits at once than allowed), loses tokens as time passes,
    # or counts a clock that went backwards as time gained.
    start = min(tokens, float(bounds.burst))
    now = T0 + timedelta(seconds=elapsed)
    filled = refilled_tokens(start, T0, now, bounds)
    assert start <= filled <= bounds.burst
    assert refilled_tokens(start, T0, now + timedelta(seconds=later), bounds) >= filled
    assert refilled_tokens(start, now, T0, bounds) == start


@bounded()
@given(bounds=limits(), tokens=st.floats(0, 0.999))
def test_a_refused_submit_may_succeed_after_its_retry_after(bounds: AdmissionLimits, tokens: float) -> None:
    # Guards: a Retry-After too short to help (the client is refused again when it comes back as told) or below 1.
    with pytest.raises(TooManyRequestsError) as refused:
        check_rate(tokens, bounds)
    wait = int(refused.value.headers["Retry-After"])
    assert wait >= 1
    check_rate(refilled_tokens(tokens, T0, T0 + timedelta(seconds=wait), bounds), bounds)


@bounded()
@given(bounds=limits(), tokens=st.floats(1, 100))
def test_a_bucket_with_a_token_admits(bounds: AdmissionLimits, tokens: float) -> None:
    # Guards: a submit refused while the owner still has a whole token.
    check_rate(tokens, bounds)


@bounded()
@given(bounds=limits(), in_flight=st.integers(0, 100))
def test_in_flight_is_refused_exactly_from_the_limit(bounds: AdmissionLimits, in_flight: int) -> None:
    # Guards: an off-by-one that lets one more generation run than allowed, or refuses the last allowed one.
    if in_flight < bounds.max_in_flight:
        check_in_flight(in_flight, bounds)
    else:
        with pytest.raises(TooManyRequestsError):
            check_in_flight(in_flight, bounds)


@bounded()
@given(
    fields=st.fixed_dictionaries(
        {"prompt": st.just("a cat"), "avatar_id": st.just(str(AVATAR))},
        optional={"width": sides, "height": sides, "steps": steps, "seed": st.integers(0, 2**32 - 1)},
    ),
    order=st.randoms(use_true_random=False),
)
def test_the_digest_depends_on_what_is_asked_not_how_it_is_spelled(
    fields: dict[str, object], order: random.Random
) -> None:
    # Guards: an idempotent retry refused as a different request because its keys came in another order, or a
    # default spelled out (width 1024) digesting differently from the same default left out.
    items = list(fields.items())
    order.shuffle(items)
    with_defaults = {"width": 1024, "height": 1024, "steps": 28, "negative_prompt": "", **fields}
    first = request_digest(GenerateRequest.model_validate(fields))
    assert request_digest(GenerateRequest.model_validate(dict(items))) == first
    assert request_digest(GenerateRequest.model_validate(with_defaults)) == first
