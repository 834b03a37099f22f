"""Example events for the documents: every payload model filled from one story's samples, in its CloudEvent."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import DATA_CONTENT_TYPE, EventEnvelope
from contracts.events import EVENT_PAYLOADS, EventPayload, EventType, ImageRef
from contracts.object_keys import generation_image_key, lora_object_key
from contracts.schema_sample import NO_SAMPLE, sample_of
from contracts.topology import EVENT_PRODUCERS, SERVICE_REQUESTER, event_source

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vixenbliss.example/docs/examples")


def _example_uuid(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


def _example_sha256(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


# One story for every example: one creator, avatar, LoRA and generation, so that the ids agree across messages.
# Every example event is sent at EXAMPLE_TIME; the moments its payload names come before it.
EXAMPLE_TIME = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
REQUESTED_AT = EXAMPLE_TIME - timedelta(seconds=5)
GENERATION_ID = _example_uuid("generation")  # content issues UUIDs: the image key derives from it
OWNER_ID = "creator-1"  # the JWT `sub` of the creator
AVATAR_ID = _example_uuid("avatar")
LORA_MODEL_ID = _example_uuid("lora")
LORA_SHA256 = _example_sha256("example LoRA file")
IMAGE_SHA256 = _example_sha256("example image")
# Content's default GENERATION_DEADLINE_SECONDS.
DEADLINE = timedelta(seconds=600)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# Samples by field name, shared by every message; a field not named here gets what its schema allows.
FIELD_SAMPLES: Mapping[str, Any] = {
    "generation_id": GENERATION_ID,
    "owner_id": OWNER_ID,
    "avatar_id": AVATAR_ID,
    "lora_model_id": LORA_MODEL_ID,
    "active_lora_model_id": LORA_MODEL_ID,
    "name": "Nova",
    "base_model": "sdxl-base-1.0",
    "trigger_words": ["nova"],
    "prompt": "portrait of nova, soft studio light",
    "negative_prompt": "blurry, low contrast",
    "requested_at": _iso(REQUESTED_AT),
    "deadline": _iso(REQUESTED_AT + DEADLINE),
    "started_at": _iso(REQUESTED_AT + timedelta(seconds=1)),
    "canceled_at": _iso(EXAMPLE_TIME),
    "width": 1024,
    "height": 1024,
    "lora_applied": True,
    "lora_source": "memory_cache",
    "denoise_ms": 3050.0,
    "decode_encode_ms": 120.0,
    "total_ms": 3200.0,
    "generation_time_seconds": 3.2,
    "worker_mode": "async",
    "error_code": "LORA_LOAD_FAILED",
    "error": "the LoRA file loads no adapter into SDXL",
    # generation.submit and content's answers to the service that sent it.
    "request": {"avatar_id": AVATAR_ID, "prompt": "portrait of nova, soft studio light", "steps": 28},
    "idempotency_key": "campaign-7/post-3",
    "correlation_id": "campaign-7/post-3",
    "command_id": _example_uuid("event generation.submit"),
    "requester": "scheduler",
}

# The two kinds of stored object an event names: a generation's image (inside an ImageRef) and a LoRA (anywhere
# else). Keys come from the contracts' derivations, so an example passes the consumers' forgery checks.
_IMAGE = {"object_key": generation_image_key(GENERATION_ID), "sha256": IMAGE_SHA256, "size_bytes": 1_572_864}
_LORA = {"object_key": lora_object_key(LORA_SHA256), "sha256": LORA_SHA256, "size_bytes": 50 * 1024 * 1024}


def field_sample(owner: str, name: str, schema: Mapping[str, Any]) -> Any:
    """The story's value for field `name` of the model titled `owner`, or NO_SAMPLE (a `SampleLookup`)."""
    stored = _IMAGE if owner == ImageRef.__name__ else _LORA
    if name in stored:
        return stored[name]
    return FIELD_SAMPLES.get(name, NO_SAMPLE)


def example_payload(model: type[EventPayload]) -> EventPayload:
    """A valid instance of a payload model: the story's samples, then what the model's schema allows."""
    schema = model.model_json_schema()
    data = sample_of(schema, schema.get("$defs", {}), field_sample, date_time=_iso(EXAMPLE_TIME), where=model.__name__)
    return model.model_validate(data)


def aggregate_id(payload: EventPayload) -> str | None:
    """The event's subject, as the services set it: the generation id for a generation's events, else the payload's
    first `*_id` field (the avatar or LoRA it is about)."""
    ids = {name: getattr(payload, name) for name in type(payload).model_fields if name.endswith("_id")}
    found = ids.get("generation_id") or next((value for value in ids.values() if isinstance(value, str)), None)
    return str(found) if found is not None else None


def example_event(event_type: EventType) -> EventEnvelope:
    """The CloudEvent an example of `event_type` travels in, as its producer would send it."""
    payload = example_payload(EVENT_PAYLOADS[event_type])
    producer = EVENT_PRODUCERS[event_type]
    subject = aggregate_id(payload)
    return EventEnvelope(
        id=_example_uuid(f"event {event_type.value}"),
        # A requesting service's command comes from that service (the samples' "scheduler"), not from its role's name.
        source=event_source(FIELD_SAMPLES["requester"] if producer == SERVICE_REQUESTER else producer),
        type=event_type.value,
        subject=subject,
        time=EXAMPLE_TIME,
        correlationid=getattr(payload, "generation_id", None) or subject,
        datacontenttype=DATA_CONTENT_TYPE,
        data=payload.model_dump(mode="json"),
    )


def example_traceparent(event_type: EventType) -> str:
    """A W3C traceparent header (version 00, sampled) for the example of `event_type`."""
    trace = _example_sha256(f"trace {GENERATION_ID}")[:32]
    span = _example_sha256(f"span {event_type.value}")[:16]
    return f"00-{trace}-{span}-01"
