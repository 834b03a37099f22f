"""Submitting a generation: what it writes, refusals that leave nothing behind, idempotent retries, and the
rate and in-flight limits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from contracts.events import AvatarCreated, AvatarDeleted, GenerationRequested
from contracts.object_keys import lora_object_key
from services.common.http.errors import (
    ConflictError,
    DomainError,
    InvalidRequestError,
    NotFoundError,
    TooManyRequestsError,
)
from services.content.models import Generation, IdempotencyKey
from services.content.schemas import GenerateRequest
from services.content.submit import Submitted
from tests.support.content.harness import (
    DEADLINE,
    OTHER,
    OWNER,
    SHA,
    Generations,
    Harness,
    _completed,
    _count,
    _outbox,
    _pair,
    _ready_avatar,
    _refused,
    _request,
    _result,
    _started,
    _submit,
)
from tests.support.content.units import LIMITS, T0

# --- submit -----------------------------------------------------------------------------------------------------


async def test_submit_records_a_queued_row_and_exactly_one_generation_requested(h: Harness) -> None:
    generations = h.generations()
    avatar_id, lora_id = await _ready_avatar(h, scale=0.6)

    submitted = await generations.submissions.submit(OWNER, _request(avatar_id, width=64, height=64, steps=2))

    generation = submitted.view.generation
    assert submitted.replayed is False and submitted.view.image_url is None
    assert (generation.status, generation.seed, generation.owner_id) == ("queued", 1234, OWNER)
    assert (generation.created_at, generation.deadline) == (T0, T0 + timedelta(seconds=DEADLINE))
    assert (generation.started_at, generation.finished_at) == (None, None)
    events = await _outbox(h.sessions)
    assert len(events) == 1
    requested = events[0]
    assert isinstance(requested, GenerationRequested)
    assert requested.generation_id == str(generation.id) and requested.owner_id == OWNER
    assert requested.lora is not None and (requested.lora.lora_model_id, requested.lora.scale) == (lora_id, 0.6)
    assert requested.lora.object_key == lora_object_key(SHA)
    assert requested.params.seed == 1234 and requested.params.width == 64
    assert requested.deadline - requested.requested_at == timedelta(seconds=DEADLINE)
    assert len(h.commits) == 1  # the relay was woken
    stored = (await generations.reads.get(OWNER, generation.id)).generation
    assert (stored.status, stored.params["steps"], stored.lora) == ("queued", 2, requested.lora.model_dump())


async def test_a_seed_in_the_request_is_kept(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)

    generation = await _submit(generations.submissions, avatar_id, seed=0)

    assert (generation.seed, generation.params["seed"]) == (0, 0)


async def test_submit_for_an_unknown_avatar_is_a_404_naming_avatar_id(h: Harness, generations: Generations) -> None:
    error = await _refused(h, lambda: _submit(generations.submissions, uuid.uuid4()), NotFoundError, status=404)

    assert [f.field for f in error.fields] == ["avatar_id"]


async def test_submit_for_someone_elses_avatar_is_the_same_404(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h, owner_id=OTHER)

    error = await _refused(
        h, lambda: _submit(generations.submissions, avatar_id, owner_id=OWNER), NotFoundError, status=404
    )

    assert [f.field for f in error.fields] == ["avatar_id"]
    assert await _submit(generations.submissions, avatar_id, owner_id=OTHER)  # its owner may


async def test_submit_for_a_deleted_avatar_is_a_404(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    deleted = AvatarDeleted(avatar_id=str(avatar_id), owner_id=OWNER, name="Vixen")
    await h.projection.apply(*_pair(deleted, T0 + timedelta(seconds=2)))

    await _refused(h, lambda: _submit(generations.submissions, avatar_id), NotFoundError, status=404)


async def test_submit_for_an_avatar_without_a_ready_lora_is_a_409(h: Harness, generations: Generations) -> None:
    avatar_id = uuid.uuid4()
    await h.projection.apply(*_pair(AvatarCreated(avatar_id=str(avatar_id), owner_id=OWNER, name="V")))

    error = await _refused(h, lambda: _submit(generations.submissions, avatar_id), ConflictError, status=409)

    assert [f.field for f in error.fields] == ["avatar_id"]


async def test_a_request_over_the_budget_is_a_422_before_anything_is_written(h: Harness) -> None:
    generations = h.generations(replace(LIMITS, max_pixel_steps=512 * 512 * 10))
    avatar_id, _ = await _ready_avatar(h)

    error = await _refused(
        h,
        lambda: _submit(generations.submissions, avatar_id, width=512, height=512, steps=11),
        InvalidRequestError,
        status=422,
    )

    assert [f.field for f in error.fields] == ["width", "height", "steps"]


async def test_the_burst_is_admitted_and_then_a_429_until_the_bucket_refills(h: Harness) -> None:
    generations = h.generations(replace(LIMITS, burst=2, rate_per_minute=6.0))
    avatar_id, _ = await _ready_avatar(h)
    await _submit(generations.submissions, avatar_id)
    await _submit(generations.submissions, avatar_id)

    error = await _refused(h, lambda: _submit(generations.submissions, avatar_id), TooManyRequestsError, status=429)

    assert error.reason_code == "SUBMIT_RATE_LIMITED"
    assert error.headers == {"Retry-After": "10"}  # one token every 10 s
    h.clock.advance(9)
    await _refused(h, lambda: _submit(generations.submissions, avatar_id), TooManyRequestsError, status=429)
    h.clock.advance(1)
    await _submit(generations.submissions, avatar_id)
    assert await _count(h.sessions, Generation.__table__) == 3


async def test_each_owner_has_a_bucket_of_their_own(h: Harness) -> None:
    generations = h.generations(replace(LIMITS, burst=1, rate_per_minute=1.0))
    mine, _ = await _ready_avatar(h, owner_id=OWNER)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)
    await _submit(generations.submissions, mine, owner_id=OWNER)

    await _refused(h, lambda: _submit(generations.submissions, mine, owner_id=OWNER), TooManyRequestsError, status=429)
    await _submit(generations.submissions, theirs, owner_id=OTHER)


async def test_the_in_flight_cap_is_a_429_until_one_finishes(h: Harness) -> None:
    generations = h.generations(replace(LIMITS, max_in_flight=2))
    avatar_id, _ = await _ready_avatar(h)
    first = await _submit(generations.submissions, avatar_id)
    second = await _submit(generations.submissions, avatar_id)
    await generations.results.apply(*_result(_started(second.id)))  # running counts as in flight too

    error = await _refused(h, lambda: _submit(generations.submissions, avatar_id), TooManyRequestsError, status=429)

    assert error.reason_code == "TOO_MANY_IN_FLIGHT"
    assert "Retry-After" in error.headers
    await generations.results.apply(*_result(_completed(first.id)))
    await _submit(generations.submissions, avatar_id)


@pytest.mark.parametrize(
    ("refusal", "status"),
    [("unknown avatar", 404), ("foreign avatar", 404), ("no lora", 409), ("over budget", 422), ("in flight", 429)],
)
async def test_a_refused_submit_takes_no_token(h: Harness, refusal: str, status: int) -> None:
    # Two tokens that never refill: one for the generation that fills the owner's only slot, one left. If the
    # refusal took it, the good submit afterwards would be rate limited.
    limits = replace(LIMITS, burst=2, rate_per_minute=0.001, max_in_flight=1, max_pixel_steps=64 * 64 * 100)
    generations = h.generations(limits)
    avatar_id, _ = await _ready_avatar(h)
    foreign, _ = await _ready_avatar(h, owner_id=OTHER)
    bare = uuid.uuid4()
    await h.projection.apply(*_pair(AvatarCreated(avatar_id=str(bare), owner_id=OWNER, name="V")))
    small: dict[str, Any] = {"width": 64, "height": 64, "steps": 10}
    attempts: dict[str, Callable[[], Any]] = {
        "unknown avatar": lambda: _submit(generations.submissions, uuid.uuid4(), **small),
        "foreign avatar": lambda: _submit(generations.submissions, foreign, **small),
        "no lora": lambda: _submit(generations.submissions, bare, **small),
        "over budget": lambda: _submit(generations.submissions, avatar_id, width=128, height=128, steps=30),
        "in flight": lambda: _submit(generations.submissions, avatar_id, **small),
    }
    occupying = await _submit(generations.submissions, avatar_id, **small)
    if refusal != "in flight":
        await generations.owner_cancel.cancel(OWNER, occupying.id)

    await _refused(h, attempts[refusal], DomainError, status=status)

    if refusal == "in flight":
        await generations.owner_cancel.cancel(OWNER, occupying.id)
    last = await _submit(generations.submissions, avatar_id, **small)  # the token the refusal left
    await generations.owner_cancel.cancel(OWNER, last.id)
    error = await _refused(
        h, lambda: _submit(generations.submissions, avatar_id, **small), TooManyRequestsError, status=429
    )
    assert error.reason_code == "SUBMIT_RATE_LIMITED"  # there really was only one left


# --- Idempotency-Key --------------------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_and_body_answers_the_same_generation(h: Harness) -> None:
    generations = h.generations(replace(LIMITS, burst=1, rate_per_minute=0.001))
    avatar_id, _ = await _ready_avatar(h)
    first = await generations.submissions.submit(OWNER, _request(avatar_id, seed=7), "key-1")
    h.clock.advance(30)

    # Key order and spelled-out defaults make no difference; the empty bucket does not matter to a replay.
    again = GenerateRequest.model_validate(
        {"seed": 7, "steps": 28, "prompt": "a portrait", "avatar_id": str(avatar_id), "negative_prompt": ""}
    )
    retry = await generations.submissions.submit(OWNER, again, "key-1")

    assert (first.replayed, retry.replayed) == (False, True)
    assert retry.view.generation.id == first.view.generation.id
    assert retry.view.generation.created_at == T0
    assert len(await _outbox(h.sessions)) == 1
    assert await _count(h.sessions, Generation.__table__) == 1
    assert await _count(h.sessions, IdempotencyKey.__table__) == 1
    assert len(h.commits) == 1  # the replay committed nothing for the relay


async def test_a_replay_answers_the_generation_as_it_stands_now(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    first = await generations.submissions.submit(OWNER, _request(avatar_id), "key-1")
    await generations.results.apply(*_result(_completed(first.view.generation.id)))

    retry = await generations.submissions.submit(OWNER, _request(avatar_id), "key-1")

    assert retry.replayed and retry.view.generation.status == "completed"
    assert retry.view.image_url is not None


async def test_the_same_key_with_another_body_is_a_422_naming_the_header(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    await generations.submissions.submit(OWNER, _request(avatar_id, seed=7), "key-1")

    error = await _refused(
        h,
        lambda: generations.submissions.submit(OWNER, _request(avatar_id, seed=8), "key-1"),
        InvalidRequestError,
        status=422,
    )

    assert [f.field for f in error.fields] == ["Idempotency-Key"]


async def test_keys_are_per_owner(h: Harness, generations: Generations) -> None:
    mine, _ = await _ready_avatar(h, owner_id=OWNER)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)

    a = await generations.submissions.submit(OWNER, _request(mine), "shared-key")
    b = await generations.submissions.submit(OTHER, _request(theirs), "shared-key")

    assert not b.replayed and a.view.generation.id != b.view.generation.id
    assert await _count(h.sessions, IdempotencyKey.__table__) == 2


async def test_a_key_past_its_lifetime_starts_afresh(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    first = await generations.submissions.submit(OWNER, _request(avatar_id, seed=1), "key-1")
    h.clock.advance(LIMITS.idempotency_ttl_seconds + 1)

    later = await generations.submissions.submit(
        OWNER, _request(avatar_id, seed=2), "key-1"
    )  # another body is fine now

    assert not later.replayed and later.view.generation.id != first.view.generation.id
    assert await _count(h.sessions, IdempotencyKey.__table__) == 1
    replay = await generations.submissions.submit(OWNER, _request(avatar_id, seed=2), "key-1")
    assert replay.replayed and replay.view.generation.id == later.view.generation.id


async def test_old_keys_are_forgotten(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    await generations.submissions.submit(OWNER, _request(avatar_id), "old")
    h.clock.advance(LIMITS.idempotency_ttl_seconds - 10)
    await generations.submissions.submit(OWNER, _request(avatar_id), "young")
    h.clock.advance(11)

    assert await generations.chores.forget_idempotency_keys() == 1

    async with h.sessions() as session:
        assert [row.key for row in (await session.execute(select(IdempotencyKey))).scalars()] == ["young"]


async def test_a_submitted_generation_reads_back_as_the_submit_answered(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)

    submitted: Submitted = await generations.submissions.submit(OWNER, _request(avatar_id, prompt="cafe\u0301"))

    stored = (await generations.reads.get(OWNER, submitted.view.generation.id)).generation
    assert stored.params == submitted.view.generation.params
    assert stored.params["prompt"] == "caf\u00e9"
