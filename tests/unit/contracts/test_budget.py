"""The generation budget: one rule for content's API and the gateway's consumer."""

from __future__ import annotations

import pytest

from contracts.budget import DEFAULT_MAX_PIXEL_STEPS, GenerationBudget, budget_refusal

DEFAULT = GenerationBudget()


@pytest.mark.parametrize(("width", "height", "steps"), [(1024, 1024, 50), (64, 64, 1), (2048, 512, 50)])
def test_requests_inside_the_budget_pass(width: int, height: int, steps: int) -> None:
    assert budget_refusal(width, height, steps, DEFAULT) is None


def test_a_request_over_the_cost_names_every_factor() -> None:
    refusal = budget_refusal(2048, 2048, 100, DEFAULT)
    assert refusal is not None and refusal.message == "the request is over the cost budget"
    assert [name for name, _ in refusal.fields] == ["width", "height", "steps"]
    assert f"{2048 * 2048 * 100:,}" in refusal.fields[0][1] and f"{DEFAULT_MAX_PIXEL_STEPS:,}" in refusal.fields[0][1]


def test_bounds_are_checked_before_the_cost() -> None:
    tight = GenerationBudget(min_side=256, max_side=1024, max_steps=30, max_pixel_steps=10**12)
    refusal = budget_refusal(128, 2048, 40, tight)
    assert refusal is not None and refusal.message == "the request is outside this deployment's bounds"
    assert dict(refusal.fields) == {
        "width": "must be between 256 and 1024",
        "height": "must be between 256 and 1024",
        "steps": "must be at most 30",
    }
