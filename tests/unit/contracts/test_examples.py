"""The example events are what the services send and what their consumers accept, for any payload model."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from contracts.asyncapi import asyncapi_document
from contracts.events import EVENT_PAYLOADS, EventPayload, EventType, GenerationCompleted, Id, LoraEvent
from contracts.examples import GENERATION_ID, example_event, example_payload, example_traceparent
from contracts.object_keys import canonical_generation_id, image_key_problem, lora_key_problem
from contracts.schema_sample import UnsampleableSchemaError
from contracts.topology import producer_source, source_service
from contracts.worker import Sha256Hex
from services.common.messaging.events import encode_event, new_event, parse_event


@pytest.mark.parametrize("event_type", list(EventType), ids=str)
def test_the_example_is_the_message_the_services_send(event_type: EventType) -> None:
    envelope = example_event(event_type)
    payload = EVENT_PAYLOADS[event_type].model_validate(envelope.data)
    rebuilt = new_event(
        payload,
        source=envelope.source,
        subject=envelope.subject,
        correlation_id=envelope.correlationid,
        event_id=envelope.id,
        time=envelope.time,
    )
    assert rebuilt == envelope
    sent = encode_event(rebuilt, traceparent=example_traceparent(event_type))
    (documented,) = asyncapi_document()["components"]["messages"][type(payload).__name__]["examples"]
    assert json.loads(sent.body) == documented["payload"]
    assert sent.headers.items() >= documented["headers"].items()
    assert sent.content_type == "application/cloudevents+json"
    assert parse_event(sent.body, sent.content_type, sent.headers) == (envelope, payload)


@pytest.mark.parametrize("event_type", list(EventType), ids=str)
def test_the_example_passes_the_consumers_trust_checks(event_type: EventType) -> None:
    envelope = example_event(event_type)
    payload = EVENT_PAYLOADS[event_type].model_validate(envelope.data)
    if event_type is EventType.GENERATION_SUBMIT:
        # No single producer: a requesting service's own source (content checks it against its settings).
        assert source_service(envelope.source) is not None and producer_source(event_type.value) is None
    else:
        assert envelope.source == producer_source(event_type.value)
    if isinstance(payload, LoraEvent):
        assert lora_key_problem(payload.object_key, payload.sha256) is None
    lora = getattr(payload, "lora", None)
    if lora is not None:
        assert lora_key_problem(lora.object_key, lora.sha256) is None
    if isinstance(payload, GenerationCompleted):
        assert image_key_problem(payload.image.object_key, payload.generation_id) is None
    generation_id = getattr(payload, "generation_id", None)
    if generation_id is not None:
        assert canonical_generation_id(generation_id) == GENERATION_ID == envelope.subject == envelope.correlationid


class Priority(StrEnum):
    LOW = "low"
    HIGH = "high"


class Budget(BaseModel):
    seconds: float = Field(gt=0, le=3600)
    cost_units: int = Field(ge=10, multiple_of=5)


class NewCommand(EventPayload):
    """A payload model the document has not seen, like the next command event someone adds."""

    generation_id: Id
    queue_name: str = Field(min_length=12, max_length=16)
    priority: Priority
    mode: Literal["fast", "careful"]
    budget: Budget | None = None
    tags: list[str] = Field(min_length=2)
    labels: dict[str, str] = Field(default_factory=dict)
    submitted_at: datetime
    urgent: bool


def test_a_new_payload_model_gets_a_valid_example_with_no_extra_work() -> None:
    payload = example_payload(NewCommand)
    assert isinstance(payload, NewCommand)
    assert payload.generation_id == GENERATION_ID  # the story's id, shared by every message
    assert payload.budget is not None and payload.budget.cost_units % 5 == 0 and payload.budget.cost_units >= 10
    assert 12 <= len(payload.queue_name) <= 16
    assert len(payload.tags) >= 2


def test_a_pattern_the_story_has_no_sample_for_is_named() -> None:
    class Checksummed(EventPayload):
        checksum: Sha256Hex

    with pytest.raises(UnsampleableSchemaError, match=r"Checksummed\.checksum"):
        example_payload(Checksummed)
