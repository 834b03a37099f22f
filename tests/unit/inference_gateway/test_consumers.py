"""The gateway's event handlers: each takes only its own event type and records it in the job table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.events import EventPayload, GenerationCanceled
from contracts.topology import SERVICE_CONTENT, event_source
from services.common.consumer import PermanentError, ReceivedEvent
from services.common.events import new_event
from services.inference_gateway.consumers import generation_canceled_handler, generation_requested_handler
from services.inference_gateway.metrics import JOBS_RECORDED
from services.inference_gateway.models import JobState
from tests.support.gateway_fakes import FakeWorker, requested, success
from tests.support.gateway_jobs import job_sessions, runner_parts, staged_events


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

        await handler(received(requested("gen-1"), "gen-1"))
        await handler(received(requested("gen-1"), "gen-1"))

        assert parts.metrics.value(JOBS_RECORDED, outcome="queued") == 1
        assert parts.metrics.value(JOBS_RECORDED, outcome="already_pending") == 1
        assert [job.generation_id for job in await parts.store.claim(10)] == ["gen-1"]


async def test_each_handler_refuses_the_other_event_type_as_a_routing_mistake(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))

        with pytest.raises(PermanentError, match="generation-canceled queue"):
            await generation_canceled_handler(parts.runner)(received(requested("gen-1"), "gen-1"))
        with pytest.raises(PermanentError, match="generation-requested queue"):
            await generation_requested_handler(parts.store, parts.runner, parts.metrics)(
                received(canceled("gen-1"), "gen-1")
            )
        assert await parts.store.job("gen-1") is None
