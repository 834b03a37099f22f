"""The gateway's event handlers: each takes only its own event type and hands it to the service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from contracts.events import EventPayload, GenerationCanceled
from contracts.topology import SERVICE_CONTENT, event_source
from services.common.consumer import PermanentError, ReceivedEvent
from services.common.events import new_event
from services.inference_gateway.consumers import generation_canceled_handler, generation_requested_handler
from services.inference_gateway.metrics import Metrics
from services.inference_gateway.retries import RetryPolicy
from services.inference_gateway.service import GenerationService
from tests.support.gateway_fakes import FakeStorage, FakeWorker, RecordingPublisher, requested, success


def received(payload: EventPayload, generation_id: str) -> ReceivedEvent:
    envelope = new_event(
        payload, source=event_source(SERVICE_CONTENT), subject=generation_id, correlation_id=generation_id
    )
    return ReceivedEvent(envelope=envelope, payload=payload, traceparent=None, redelivered=False, delivery_count=0)


def canceled(generation_id: str) -> GenerationCanceled:
    return GenerationCanceled(
        generation_id=generation_id, owner_id="owner-1", avatar_id="avatar-1", canceled_at=datetime.now(UTC)
    )


def build() -> tuple[GenerationService, FakeWorker, RecordingPublisher]:
    worker = FakeWorker(success())
    events = RecordingPublisher()
    service = GenerationService(
        worker,
        FakeStorage(),
        events,
        policy=RetryPolicy(),
        lora_url_ttl_seconds=300,
        worker_timeout_seconds=600.0,
        metrics=Metrics(),
    )
    return service, worker, events


async def test_the_cancel_handler_records_the_cancel_and_the_request_handler_then_skips_it() -> None:
    service, worker, events = build()
    generation_id = str(uuid.uuid4())

    await generation_canceled_handler(service)(received(canceled(generation_id), generation_id))
    await generation_requested_handler(service)(received(requested(generation_id), generation_id))

    assert service.was_canceled(generation_id)
    assert worker.requests == [] and events.events == []


async def test_each_handler_refuses_the_other_event_type_as_a_routing_mistake() -> None:
    service, _, _ = build()

    with pytest.raises(PermanentError, match="generation-canceled queue"):
        await generation_canceled_handler(service)(received(requested("gen-1"), "gen-1"))
    with pytest.raises(PermanentError, match="generation-requested queue"):
        await generation_requested_handler(service)(received(canceled("gen-1"), "gen-1"))
    assert not service.was_canceled("gen-1")
