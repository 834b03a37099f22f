"""Events on the wire: CloudEvents structured mode via the SDK, AMQP properties, parsing errors."""

from __future__ import annotations

import json

import aio_pika
import pytest
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.v1.event import CloudEvent

from contracts.envelope import EventEnvelope
from contracts.events import AvatarCreated, GenerationStarted
from services.common.messaging.events import (
    InvalidEventError,
    encode_event,
    new_event,
    parse_event,
    to_message,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _event() -> EventEnvelope:
    payload = GenerationStarted(generation_id="g1", attempt=2, worker_mode="async")
    return new_event(payload, source="/vixenbliss/inference-gateway", subject="g1", correlation_id="g1")


def test_new_event_fills_the_attributes() -> None:
    event = _event()
    assert event.type == "generation.started"
    assert event.subject == "g1" and event.correlationid == "g1"
    assert event.time.tzinfo is not None
    assert event.data == {"schema_version": 1, "generation_id": "g1", "attempt": 2, "worker_mode": "async"}
    assert _event().id != event.id


def test_message_is_structured_persistent_and_traced() -> None:
    event = _event()
    message = to_message(event, traceparent=TRACEPARENT)
    assert message.content_type == "application/cloudevents+json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == event.id
    assert message.headers == {"traceparent": TRACEPARENT}
    body = json.loads(message.body)
    assert body["specversion"] == "1.0" and body["correlationid"] == "g1"
    assert body["time"].endswith("Z")


def test_round_trip_gives_the_same_envelope_and_typed_payload() -> None:
    event = _event()
    encoded = encode_event(event)
    envelope, payload = parse_event(encoded.body, encoded.content_type, encoded.headers)
    assert envelope == event
    assert isinstance(payload, GenerationStarted) and payload.attempt == 2


def test_any_cloudevents_reader_can_read_our_events() -> None:
    encoded = encode_event(_event())
    read = ce_rabbitmq.from_structured_event(
        ce_rabbitmq.RabbitMQMessage(headers={}, content_type=encoded.content_type, body=encoded.body)
    )
    assert read.get_type() == "generation.started"
    assert read.get_extension("correlationid") == "g1"


def test_binary_mode_events_from_other_producers_are_accepted() -> None:
    payload = AvatarCreated(avatar_id="a1", owner_id="o1", name="Ava")
    sdk_event = CloudEvent(
        {"type": "avatar.created", "source": "/elsewhere", "datacontenttype": "application/json"},
        payload.model_dump(mode="json"),
    )
    raw = ce_rabbitmq.to_binary_event(sdk_event)
    envelope, parsed = parse_event(raw.body, raw.content_type, raw.headers)
    assert envelope.source == "/elsewhere" and parsed == payload


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not a CloudEvent"),
        (b'{"specversion": "1.0", "type": "x"}', "not a CloudEvent"),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"nope.nope","time":"2026-01-01T00:00:00Z",'
            b'"datacontenttype":"application/json","data":{}}',
            "unknown event type",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"generation.started",'
            b'"time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{"attempt":0}}',
            "bad generation.started payload",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"/s","type":"generation.started",'
            b'"datacontenttype":"application/json","data":"text"}',
            "must be a JSON object",
        ),
    ],
)
def test_garbage_raises_invalid_event_error(body: bytes, match: str) -> None:
    with pytest.raises(InvalidEventError, match=match):
        parse_event(body, "application/cloudevents+json", {})
