"""Small generation.requested payloads for tests of the broker and its tools (the gateway has its own builders)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import GenerationParams, GenerationRequested


def small_request(
    generation_id: str = "gen-1", *, deadline_in: timedelta = timedelta(minutes=5)
) -> GenerationRequested:
    """A 64×64, 2-step request without a LoRA, due `deadline_in` from now."""
    now = datetime.now(UTC)
    return GenerationRequested(
        generation_id=generation_id,
        owner_id="owner-1",
        avatar_id="avatar-1",
        params=GenerationParams(prompt="a portrait", width=64, height=64, steps=2),
        requested_at=now,
        deadline=now + deadline_in,
    )
