"""generation.submit on SQLite: a command admitted by the API's rules, answered once through the outbox (accepted,
rejected in the API's error shape), followed to its end (generation.finished), and never twice."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from contracts.envelope import EventEnvelope
from contracts.events import (
    EventPayload,
    GenerationAccepted,
    GenerationFailed,
    GenerationFinished,
    GenerationRejected,
    GenerationRequested,
    GenerationSubmit,
)
from services.common.http.errors import DomainError, error_body
from services.common.messaging.events import new_event, parse_event
from services.content.commands import SubmitCommands
from services.content.models import Generation, outbox_table
from services.content.submit import Submissions
from tests.support.content.harness import (
    OTHER,
    OWNER,
    Harness,
    _completed,
    _count,
    _ready_avatar,
    _request,
    _result,
    _snapshot,
)
from tests.support.content.units import LIMITS

SCHEDULER = "scheduler"
SOURCE = "/vixenbliss/scheduler"


def command(avatar_id: uuid.UUID | str, owner_id: str = OWNER, **fields: Any) -> GenerationSubmit:
    """A command for a small image of the avatar; `fields` set the request's, or the command's own."""
    own = {name: fields.pop(name) for name in ("idempotency_key", "correlation_id") if name in fields}
    request = {"avatar_id": str(avatar_id), "prompt": "a portrait", "width": 64, "height": 64, "steps": 2, **fields}
    return GenerationSubmit(owner_id=owner_id, request=request, **own)


def envelope_of(payload: GenerationSubmit, event_id: str | None = None) -> EventEnvelope:
    return new_event(payload, source=SOURCE, subject=None, event_id=event_id)


async def outbox(h: Harness) -> list[tuple[str, EventEnvelope, EventPayload]]:
    """Every outbox row: its routing key, envelope and payload, in order."""
    async with h.sessions() as session:
        rows = (await session.execute(select(outbox_table).order_by(outbox_table.c.id))).mappings().all()
    return [(row["routing_key"], *parse_event(row["body"], row["content_type"], row["headers"])) for row in rows]


async def answers(h: Harness) -> list[tuple[str, EventPayload]]:
    """The outbox rows addressed to a requesting service: (routing key, payload)."""
    return [(key, payload) for key, _, payload in await outbox(h) if key.endswith(f".{SCHEDULER}")]


def commands_of(h: Harness, submissions: Submissions) -> SubmitCommands:
    return SubmitCommands(h.sessions, submissions, on_commit=lambda: h.commits.append(None), clock=h.clock)


async def test_a_command_queues_a_generation_and_answers_accepted_under_the_requesters_key(h: Harness) -> None:
    generations = h.generations()
    commands = commands_of(h, generations.submissions)
    avatar_id, _ = await _ready_avatar(h)
    sent = envelope_of(command(avatar_id, correlation_id="campaign-7/post-3"))

    await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)

    [(requested_key, _, requested), (accepted_key, accepted_envelope, accepted)] = await outbox(h)
    assert requested_key == "generation.requested" and isinstance(requested, GenerationRequested)
    assert accepted_key == "generation.accepted.scheduler" and isinstance(accepted, GenerationAccepted)
    assert (accepted.generation_id, accepted.replayed) == (requested.generation_id, False)
    assert (accepted.requester, accepted.command_id, accepted.correlation_id, accepted.owner_id) == (
        SCHEDULER,
        sent.id,
        "campaign-7/post-3",
        OWNER,
    )
    assert (accepted_envelope.source, accepted_envelope.correlationid) == ("/vixenbliss/content", "campaign-7/post-3")
    assert (requested.owner_id, requested.avatar_id, requested.params.width) == (OWNER, str(avatar_id), 64)
    async with h.sessions() as session:
        row = await session.get(Generation, uuid.UUID(requested.generation_id))
    assert row is not None
    assert (row.requested_by, row.command_id, row.command_correlation) == (SCHEDULER, sent.id, "campaign-7/post-3")
    assert h.commits  # the relay was woken


async def test_a_redelivered_command_makes_no_second_generation_and_no_second_answer(h: Harness) -> None:
    commands = commands_of(h, h.generations().submissions)
    avatar_id, _ = await _ready_avatar(h)
    sent = envelope_of(command(avatar_id))
    await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)
    first = await _snapshot(h.sessions)

    for _ in range(3):
        await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)

    assert await _snapshot(h.sessions) == first
    assert (first.generations, first.outbox) == (1, 2)


async def test_a_repeat_with_the_same_key_answers_the_earlier_generation_and_its_end(h: Harness) -> None:
    generations = h.generations()
    commands = commands_of(h, generations.submissions)
    avatar_id, _ = await _ready_avatar(h)
    first = envelope_of(command(avatar_id, idempotency_key="post-3"))
    await commands.handle(first, GenerationSubmit.model_validate(first.data), SCHEDULER)
    [(_, made)] = await answers(h)
    assert isinstance(made, GenerationAccepted)
    await generations.results.apply(*_result(_completed(uuid.UUID(made.generation_id))))

    repeat = envelope_of(command(avatar_id, idempotency_key="post-3", correlation_id="again"))
    await commands.handle(repeat, GenerationSubmit.model_validate(repeat.data), SCHEDULER)

    assert await _count(h.sessions, Generation.__table__) == 1
    *_, (_, replayed), (finished_key, finished) = await answers(h)
    assert isinstance(replayed, GenerationAccepted) and isinstance(finished, GenerationFinished)
    assert (replayed.generation_id, replayed.replayed, replayed.correlation_id) == (made.generation_id, True, "again")
    assert finished_key == "generation.finished.scheduler"
    assert (finished.status, finished.command_id, finished.correlation_id) == ("completed", repeat.id, "again")


async def test_a_commands_key_never_meets_the_owners_own_idempotency_key(h: Harness) -> None:
    generations = h.generations()
    commands = commands_of(h, generations.submissions)
    avatar_id, _ = await _ready_avatar(h)
    mine = await generations.submissions.submit(OWNER, _request(avatar_id, prompt="mine"), "post-3")

    sent = envelope_of(command(avatar_id, idempotency_key="post-3"))
    await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)

    [(_, accepted)] = await answers(h)
    assert isinstance(accepted, GenerationAccepted) and accepted.replayed is False
    assert accepted.generation_id != str(mine.view.generation.id)


async def refusal(h: Harness, commands: SubmitCommands, payload: GenerationSubmit) -> GenerationRejected:
    """Handle a command that must be refused: it writes its answer and nothing else (no generation, no event for
    the gateway, no idempotency key, no spent token), once however often it comes."""
    before = await _snapshot(h.sessions)
    sent = envelope_of(payload)
    for _ in range(2):
        await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)
    after = await _snapshot(h.sessions)
    assert replace(after, outbox=before.outbox) == before
    assert after.outbox == before.outbox + 1
    key, envelope, answer = (await outbox(h))[-1]
    assert key == "generation.rejected.scheduler" and isinstance(answer, GenerationRejected)
    assert (envelope.subject, answer.command_id, answer.correlation_id) == (sent.id, sent.id, sent.id)
    return answer


async def test_another_owners_avatar_is_refused_as_the_api_refuses_it(h: Harness) -> None:
    commands = commands_of(h, h.generations().submissions)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)

    answer = await refusal(h, commands, command(theirs))

    assert (answer.status, answer.error_code) == (404, "NOT_FOUND")
    assert [(f.field, f.reason) for f in answer.details.fields] == [
        ("request.avatar_id", "no such avatar (or not yet known to content)")
    ]


async def test_a_request_over_the_cost_budget_is_refused_with_the_apis_fields(h: Harness) -> None:
    commands = commands_of(h, h.generations().submissions)
    avatar_id, _ = await _ready_avatar(h)

    answer = await refusal(h, commands, command(avatar_id, width=2048, height=2048, steps=100))

    assert (answer.status, answer.error_code) == (422, "INVALID_REQUEST")
    assert answer.error == "the request is over the cost budget"
    assert [f.field for f in answer.details.fields] == ["request.width", "request.height", "request.steps"]


async def test_a_request_the_api_would_not_parse_is_refused_field_by_field(h: Harness) -> None:
    commands = commands_of(h, h.generations().submissions)
    avatar_id, _ = await _ready_avatar(h)

    answer = await refusal(h, commands, command(avatar_id, steps="4", max_in_flight=1000, prompt="a\x00b"))

    assert (answer.status, answer.error_code) == (422, "INVALID_REQUEST")
    assert {f.field for f in answer.details.fields} == {"request.steps", "request.max_in_flight", "request.prompt"}


async def test_an_owner_id_no_token_could_carry_is_refused(h: Harness) -> None:
    commands = commands_of(h, h.generations().submissions)
    avatar_id, _ = await _ready_avatar(h)

    answer = await refusal(h, commands, command(avatar_id, owner_id="o1\u202e"))

    assert [f.field for f in answer.details.fields] == ["owner_id"]


async def test_the_rate_limit_refuses_with_its_reason_code_and_retry_after(h: Harness) -> None:
    commands = commands_of(h, h.generations(replace(LIMITS, burst=1, rate_per_minute=1.0)).submissions)
    avatar_id, _ = await _ready_avatar(h)
    sent = envelope_of(command(avatar_id))
    await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)

    answer = await refusal(h, commands, command(avatar_id))

    assert (answer.status, answer.error_code) == (429, "RATE_LIMITED")
    assert answer.details.reason_code == "SUBMIT_RATE_LIMITED"
    assert answer.retry_after_seconds == 60


async def test_a_refusal_carries_the_apis_error_body(h: Harness) -> None:
    generations = h.generations(replace(LIMITS, max_in_flight=1))
    commands = commands_of(h, generations.submissions)
    avatar_id, _ = await _ready_avatar(h)
    await generations.submissions.submit(OWNER, _request(avatar_id))
    with pytest.raises(DomainError) as refused:  # the API's refusal of the same submit
        await generations.submissions.submit(OWNER, _request(avatar_id))
    api = refused.value
    answer = await refusal(h, commands, command(avatar_id))

    assert answer.model_dump(include={"error", "error_code", "details"}) == error_body(
        api.message, api.error_code, api.fields, api.reason_code
    )
    assert (answer.status, answer.retry_after_seconds) == (429, int(api.headers["Retry-After"]))


async def test_the_end_of_a_commands_generation_is_answered_once_and_an_api_generation_is_not(h: Harness) -> None:
    generations = h.generations()
    commands = commands_of(h, generations.submissions)
    avatar_id, _ = await _ready_avatar(h)
    by_api = await generations.submissions.submit(OWNER, _request(avatar_id))
    sent = envelope_of(command(avatar_id))
    await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)
    [(_, accepted)] = await answers(h)
    assert isinstance(accepted, GenerationAccepted)
    ours = uuid.UUID(accepted.generation_id)

    await generations.results.apply(*_result(_completed(by_api.view.generation.id)))
    failed = GenerationFailed(generation_id=str(ours), error_code="CUDA_OOM", error="out of memory", retryable=True)
    await generations.results.apply(*_result(failed))
    await generations.results.apply(*_result(_completed(ours)))  # a late image after the failure changes nothing

    [_, (key, finished)] = await answers(h)
    assert key == "generation.finished.scheduler" and isinstance(finished, GenerationFinished)
    assert (finished.generation_id, finished.status, finished.image) == (str(ours), "failed", None)
    assert (finished.error_code, finished.error, finished.retryable) == ("CUDA_OOM", "out of memory", True)
    assert (finished.command_id, finished.correlation_id) == (sent.id, sent.id)


async def test_a_cancel_and_a_deadline_end_a_commands_generation_with_an_answer(h: Harness) -> None:
    generations = h.generations()
    commands = commands_of(h, generations.submissions)
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(2):
        sent = envelope_of(command(avatar_id))
        await commands.handle(sent, GenerationSubmit.model_validate(sent.data), SCHEDULER)
    first, second = [uuid.UUID(a.generation_id) for _, a in await answers(h) if isinstance(a, GenerationAccepted)]

    await generations.owner_cancel.cancel(OWNER, first)
    h.clock.advance(3600)
    assert await generations.chores.fail_overdue(grace_seconds=60) == 1

    ends = [a for _, a in await answers(h) if isinstance(a, GenerationFinished)]
    assert [(a.generation_id, a.status) for a in ends] == [(str(first), "canceled"), (str(second), "failed")]
    assert (ends[0].error_code, ends[1].error_code, ends[1].retryable) == (None, "TIMEOUT", True)
