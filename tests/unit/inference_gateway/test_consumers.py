"""The gateway's event handlers: each takes only its own event type and records it in the job table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.events import EventPayload, GenerationCanceled, GenerationRequested
from contracts.object_keys import generation_image_key, lora_object_key
from contracts.topology import SERVICE_CONTENT, event_source
from services.common.messaging.consumer import ForgedEventError, PermanentError, ReceivedEvent
from services.common.messaging.events import new_event
from services.inference_gateway.consumers import (
    forged_request_field,
    generation_canceled_handler,
    generation_requested_handler,
)
from services.inference_gateway.metrics import JOBS_RECORDED
from services.inference_gateway.models import JobState
from tests.support.gateway.fakes import LORA_KEY, FakeWorker, gid, requested, success
from tests.support.gateway.jobs import job_sessions, runner_parts, staged_events


def received(payload: EventPayload, generation_id: str) -> ReceivedEvent:
    envelope = new_event(
        payload, source=event_source(SERVICE_CONTENT), subject=generation_id, correlation_id=generation_id
    )
    return ReceivedEvent(envelope=envelope, payload=payload, traceparent=None, redelivered=False, delivery_count=0)


def canceled(generation_id: str) -> GenerationCanceled:
    return GenerationCanceled(
        generation_id=generation_id, owner_id="owner-1", avatar_id="avatar-1", canceled_at=datetime.now(UTC)
    )


async def test_the_cancel_handler_records_the_cancel_and_the_request_handler_then_skips_it(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))
        generation_id = str(uuid.uuid4())

        await generation_canceled_handler(parts.runner)(received(canceled(generation_id), generation_id))
        await generation_requested_handler(parts.store, parts.runner, parts.metrics)(
            received(requested(generation_id), generation_id)
        )

        job = await parts.store.job(generation_id)
        assert job is not None and job.state == JobState.CANCELED and job.request is None
        assert parts.metrics.value(JOBS_RECORDED, outcome="canceled") == 1
        assert await parts.store.claim(10) == []
        assert parts.worker.requests == [] and await staged_events(sessions) == []


async def test_a_request_recorded_twice_is_one_job(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))
        handler = generation_requested_handler(parts.store, parts.runner, parts.metrics)

        await handler(received(requested(gid("gen-1")), gid("gen-1")))
        await handler(received(requested(gid("gen-1")), gid("gen-1")))

        assert parts.metrics.value(JOBS_RECORDED, outcome="queued") == 1
        assert parts.metrics.value(JOBS_RECORDED, outcome="already_pending") == 1
        assert [job.generation_id for job in await parts.store.claim(10)] == [gid("gen-1")]


async def test_each_handler_refuses_the_other_event_type_as_a_routing_mistake(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))

        with pytest.raises(PermanentError, match="generation-canceled queue"):
            await generation_canceled_handler(parts.runner)(received(requested(gid("gen-1")), gid("gen-1")))
        with pytest.raises(PermanentError, match="generation-requested queue"):
            await generation_requested_handler(parts.store, parts.runner, parts.metrics)(
                received(canceled(gid("gen-1")), gid("gen-1"))
            )
        assert await parts.store.job(gid("gen-1")) is None


def naming(key: str, generation_id: str | None = None) -> GenerationRequested:
    request = requested(generation_id or str(uuid.uuid4()))
    assert request.lora is not None
    return request.model_copy(update={"lora": request.lora.model_copy(update={"object_key": key})})


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (naming("uploads/loras/a/l.safetensors"), "not the content address"),
        (naming(lora_object_key("cd" * 32)), "not the content address"),
        (naming(generation_image_key(str(uuid.uuid4()))), "not the content address"),
        (naming(LORA_KEY, generation_id="gen-1"), "not a UUID"),
    ],
)
async def test_a_request_naming_what_content_never_would_is_forged_and_records_no_job(
    tmp_path: Path, request_: GenerationRequested, problem: str
) -> None:
    assert problem in (forged_request_field(request_) or "")
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))
        with pytest.raises(ForgedEventError, match=problem):
            await generation_requested_handler(parts.store, parts.runner, parts.metrics)(
                received(request_, request_.generation_id)
            )
        assert await parts.store.job(request_.generation_id) is None


def test_a_request_as_content_makes_it_is_not_forged() -> None:
    assert forged_request_field(requested(str(uuid.uuid4()))) is None
    no_lora = requested(str(uuid.uuid4()), lora_key=None)
    assert forged_request_field(no_lora) is None


async def test_a_cancel_of_an_id_content_never_issues_is_forged_and_records_nothing(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))
        with pytest.raises(ForgedEventError, match="not a UUID"):
            await generation_canceled_handler(parts.runner)(received(canceled("../x"), "../x"))
        assert await parts.store.job("../x") is None
