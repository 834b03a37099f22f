"""The cost budget of one generation (sizes, steps, width × height × steps): one rule for every place a request
enters, content's API and the gateway's consumer."""

from __future__ import annotations

from dataclasses import dataclass

# The worker contract's outer bounds (contracts.worker.WorkerRequest): no budget may admit what the worker refuses.
WORKER_MIN_SIDE = 64
WORKER_MAX_SIDE = 2048
WORKER_MAX_STEPS = 100
# 1024×1024 at 50 steps: SDXL's usual 1024² at 28–50 steps fits; 2048² at 100 steps (8× that) does not.
DEFAULT_MAX_PIXEL_STEPS = 1024 * 1024 * 50


@dataclass(frozen=True)
class GenerationBudget:
    """A deployment's bounds on one generation (CONTENT_MIN_SIDE, CONTENT_MAX_SIDE, CONTENT_MAX_STEPS,
    CONTENT_MAX_PIXEL_STEPS)."""

    min_side: int = WORKER_MIN_SIDE
    max_side: int = WORKER_MAX_SIDE
    max_steps: int = WORKER_MAX_STEPS
    max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS


@dataclass(frozen=True)
class BudgetRefusal:
    """Why a request does not fit the budget: a message, and each offending field with its reason."""

    message: str
    fields: tuple[tuple[str, str], ...]


def budget_refusal(width: int, height: int, steps: int, budget: GenerationBudget) -> BudgetRefusal | None:
    """None when the sizes and steps fit the budget; else what is outside its bounds, or over its cost."""
    fields: list[tuple[str, str]] = []
    for name, value in (("width", width), ("height", height)):
        if not budget.min_side <= value <= budget.max_side:
            fields.append((name, f"must be between {budget.min_side} and {budget.max_side}"))
    if steps > budget.max_steps:
        fields.append(("steps", f"must be at most {budget.max_steps}"))
    if fields:
        return BudgetRefusal("the request is outside this deployment's bounds", tuple(fields))
    cost = width * height * steps
    if cost <= budget.max_pixel_steps:
        return None
    reason = (
        f"width × height × steps is {cost:,}, over this deployment's budget of {budget.max_pixel_steps:,}: "
        "ask for fewer steps or a smaller image"
    )
    return BudgetRefusal(
        "the request is over the cost budget", tuple((name, reason) for name in ("width", "height", "steps"))
    )
