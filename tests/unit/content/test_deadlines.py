"""The deadline sweep: generations past their deadline and grace fail with TIMEOUT, and stay failed."""

from __future__ import annotations

from datetime import timedelta

from contracts.events import GenerationFailed
from tests.support.content.harness import (
    DEADLINE,
    OWNER,
    Generations,
    Harness,
    _completed,
    _ready_avatar,
    _result,
    _submit,
)
from tests.support.content.units import T0

# --- deadlines --------------------------------------------------------------------------------------------------


async def test_only_generations_past_deadline_and_grace_fail_with_timeout(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    stuck = await _submit(generations.submissions, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 30)
    assert await generations.chores.fail_overdue(grace_seconds=60) == 0  # inside the grace period
    fresh = await _submit(generations.submissions, avatar_id)  # its deadline is later

    h.clock.now = T0 + timedelta(seconds=DEADLINE + 61)
    assert await generations.chores.fail_overdue(grace_seconds=60) == 1

    failed = (await generations.reads.get(OWNER, stuck.id)).generation
    assert failed.status == "failed" and failed.finished_at == h.clock.now
    assert failed.error is not None and failed.error["error_code"] == "TIMEOUT"
    assert (await generations.reads.get(OWNER, fresh.id)).generation.status == "queued"
    assert await generations.chores.fail_overdue(grace_seconds=60) == 0  # already terminal: swept once


async def test_a_result_arriving_after_the_timeout_does_not_reopen_the_generation(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 120)
    await generations.chores.fail_overdue(grace_seconds=60)

    late = GenerationFailed(
        generation_id=str(generation.id), error_code="LORA_LOAD_FAILED", error="x", retryable=False, attempts=1
    )
    await generations.results.apply(*_result(late))
    await generations.results.apply(*_result(_completed(generation.id)))

    stored = (await generations.reads.get(OWNER, generation.id)).generation
    assert stored.status == "failed" and stored.image is None
    assert stored.error is not None and stored.error["error_code"] == "TIMEOUT"


async def test_the_fail_overdue_limit_bounds_one_pass(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(3):
        await _submit(generations.submissions, avatar_id)
    h.clock.now = T0 + timedelta(seconds=DEADLINE + 1)

    assert await generations.chores.fail_overdue(grace_seconds=0, limit=2) == 2
    assert await generations.chores.fail_overdue(grace_seconds=0, limit=2) == 1
