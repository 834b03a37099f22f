"""Properties of content's state decisions over any sequence of result events: status only moves forward, nothing
leaves completed or failed, a late started never overwrites a final state, and the same event applied twice changes
no more than applying it once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from contracts.events import EventType, GenerationCompleted, GenerationFailed, GenerationStarted, ImageRef
from contracts.object_keys import generation_image_key
from contracts.worker import ModelInfo
from services.content.decisions import STATUS_STEP, TERMINAL_STATUSES, apply_result, cancel, status_after
from services.content.models import Generation, GenerationStatus
from tests.support.properties import bounded

NOW = datetime(2026, 1, 2, tzinfo=UTC)
GENERATION_ID = uuid.UUID(int=7)
FINAL = frozenset({GenerationStatus.COMPLETED, GenerationStatus.FAILED})
# What a reader of the generation sees; `updated_at` is left out (it only says when the row was last written).
SEEN = ("status", "attempts", "started_at", "finished_at", "image", "error", "image_purge_pending")

Result = tuple[EventType, GenerationStarted | GenerationCompleted | GenerationFailed]
attempts = st.integers(1, 5)
results: st.SearchStrategy[Result] = st.one_of(
    st.builds(
        lambda n: (
            EventType.GENERATION_STARTED,
            GenerationStarted(generation_id=str(GENERATION_ID), attempt=n, worker_mode="sync"),
        ),
        attempts,
    ),
    st.builds(
        lambda n: (
            EventType.GENERATION_COMPLETED,
            GenerationCompleted(
                generation_id=str(GENERATION_ID),
                image=ImageRef(
                    object_key=generation_image_key(GENERATION_ID),
                    sha256="ab" * 32,
                    width=64,
                    height=64,
                    size_bytes=100,
                ),
                generation_time_seconds=1.0,
                model_info=ModelInfo(base_model="tiny", lora_applied=True, lora_scale=1.0),
                attempts=n,
            ),
        ),
        attempts,
    ),
    st.builds(
        lambda n, retryable: (
            EventType.GENERATION_FAILED,
            GenerationFailed(
                generation_id=str(GENERATION_ID),
                error_code="CUDA_OOM",
                error="out of memory",
                retryable=retryable,
                attempts=n,
            ),
        ),
        attempts,
        st.booleans(),
    ),
)


def queued() -> Generation:
    return Generation(
        id=GENERATION_ID,
        owner_id="o",
        avatar_id="a",
        status=GenerationStatus.QUEUED.value,
        params={},
        seed=1,
        attempts=0,
        created_at=NOW,
        updated_at=NOW,
        deadline=NOW + timedelta(minutes=10),
        image_purge_pending=False,
    )


def seen(generation: Generation) -> dict[str, Any]:
    return {name: getattr(generation, name) for name in SEEN}


@bounded(300)
@given(events=st.lists(results, max_size=8), cancel_at=st.integers(0, 8) | st.none())
def test_status_only_moves_forward_and_final_states_stay(events: list[Result], cancel_at: int | None) -> None:
    # Guards: a late or redelivered started (or any result) moving a generation back or out of a final state,
    # e.g. completed → running, which would show a finished image as running again or let it be canceled.
    generation = queued()
    for index, (event_type, payload) in enumerate(events):
        if index == cancel_at and GenerationStatus(generation.status) not in TERMINAL_STATUSES:
            cancel(generation, NOW)
        before_status, before = GenerationStatus(generation.status), seen(generation)
        apply_result(generation, payload, event_type, NOW + timedelta(seconds=index + 1))
        after = GenerationStatus(generation.status)
        assert STATUS_STEP[after] >= STATUS_STEP[before_status]
        if before_status in TERMINAL_STATUSES:
            assert after is before_status
        if before_status in FINAL:
            assert seen(generation) == before


@bounded(50)
@given(final=st.sampled_from(sorted(TERMINAL_STATUSES)))
def test_a_late_started_never_overwrites_a_final_state(final: GenerationStatus) -> None:
    # Guards: the race in the design's reliability rules (a started delivered after its completed).
    assert status_after(final, EventType.GENERATION_STARTED) is None


@bounded(300)
@given(history=st.lists(results, max_size=4), event=results, gap=st.integers(0, 60))
def test_the_same_event_twice_changes_nothing_more_than_once(history: list[Result], event: Result, gap: int) -> None:
    # Guards: a duplicate delivery (at-least-once) counting an attempt twice, moving the status a second step, or
    # rewriting when the generation started or finished.
    generation = queued()
    for event_type, payload in history:
        apply_result(generation, payload, event_type, NOW)
    apply_result(generation, event[1], event[0], NOW + timedelta(seconds=1))
    once = seen(generation)
    apply_result(generation, event[1], event[0], NOW + timedelta(seconds=1 + gap))
    assert seen(generation) == once
