"""CloudEvents over AMQP: build an event and convert it to and from an aio-pika Message (structured mode)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractMessage
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.v1.event import CloudEvent
from pydantic import ValidationError

from contracts.envelope import DATA_CONTENT_TYPE, EventEnvelope
from contracts.events import EVENT_PAYLOADS, EventPayload, EventType, event_type_of

TRACEPARENT_HEADER = "traceparent"


class InvalidEventError(ValueError):
    """A message that is not a valid event of ours: retrying cannot help, so it goes to the DLQ."""


def new_event(
    payload: EventPayload,
    *,
    source: str,
    subject: str | None,
    correlation_id: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> EventEnvelope:
    """A new event for `payload`; its type comes from the payload's class."""
    return EventEnvelope(
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=event_type_of(payload).value,
        subject=subject,
        time=time or datetime.now(UTC),
        correlationid=correlation_id,
        datacontenttype=DATA_CONTENT_TYPE,
        data=payload.model_dump(mode="json"),
    )


@dataclass(frozen=True)
class EncodedEvent:
    """An event laid out for AMQP: what the outbox stores and the relay publishes."""

    event_id: str
    routing_key: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def to_message(self) -> aio_pika.Message:
        """A persistent aio-pika Message with message_id = event id."""
        return aio_pika.Message(
            body=self.body,
            content_type=self.content_type,
            headers=dict(self.headers),
            message_id=self.event_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )


def encode_event(
    envelope: EventEnvelope, *, traceparent: str | None = None, routing_key: str | None = None
) -> EncodedEvent:
    """Lay out an event with the CloudEvents SDK's RabbitMQ binding, structured mode, under `routing_key` (default:
    its type; an answer to one requesting service goes under its own key, contracts.topology.reply_routing_key)."""
    attributes: dict[str, Any] = {
        key: value
        for key, value in envelope.model_dump(exclude={"data"}).items()
        if value is not None  # absent optional attributes are omitted, not null
    }
    ce_message = ce_rabbitmq.to_structured_event(CloudEvent(attributes, dict(envelope.data)))
    headers = {str(k): str(v) for k, v in ce_message.headers.items()}
    if traceparent:
        headers[TRACEPARENT_HEADER] = traceparent
    return EncodedEvent(
        event_id=envelope.id,
        routing_key=routing_key or envelope.type,
        body=ce_message.body,
        content_type=ce_message.content_type or "",
        headers=headers,
    )


def to_message(envelope: EventEnvelope, *, traceparent: str | None = None) -> aio_pika.Message:
    """The aio-pika Message of an event (structured CloudEvent, persistent, message_id = event id)."""
    return encode_event(envelope, traceparent=traceparent).to_message()


def parse_event(
    body: bytes, content_type: str | None, headers: Mapping[str, Any] | None = None
) -> tuple[EventEnvelope, EventPayload]:
    """The envelope and typed payload of a raw message; InvalidEventError when it is not one of ours."""
    str_headers = {str(k): _header_text(v) for k, v in (headers or {}).items()}
    try:
        event = ce_rabbitmq.from_rabbitmq_event(
            ce_rabbitmq.RabbitMQMessage(headers=str_headers, content_type=content_type, body=body)
        )
        attributes = dict(event.get_attributes())
        data = event.get_data()
    except Exception as error:  # the SDK raises many types on garbage; all mean the same here
        raise InvalidEventError(f"not a CloudEvent: {type(error).__name__}: {error}"[:500]) from error
    if not isinstance(data, dict):
        raise InvalidEventError(f"event data must be a JSON object, got {type(data).__name__}")
    try:
        envelope = EventEnvelope.model_validate({**attributes, "data": data})
    except ValidationError as error:
        raise InvalidEventError(f"bad CloudEvent attributes: {_summary(error)}") from error
    try:
        model = EVENT_PAYLOADS[EventType(envelope.type)]
    except ValueError:
        raise InvalidEventError(f"unknown event type {envelope.type!r}") from None
    try:
        payload = model.model_validate(envelope.data)
    except ValidationError as error:
        raise InvalidEventError(f"bad {envelope.type} payload: {_summary(error)}") from error
    return envelope, payload


def from_message(message: AbstractMessage) -> tuple[EventEnvelope, EventPayload]:
    """The envelope and typed payload of an aio-pika message (see parse_event)."""
    return parse_event(message.body, message.content_type, message.headers)


def traceparent_of(message: AbstractMessage) -> str | None:
    """The W3C traceparent header of a message, if any."""
    value = (message.headers or {}).get(TRACEPARENT_HEADER)
    return _header_text(value) if value is not None else None


def _header_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
        for e in error.errors(include_input=False, include_url=False)
    )[:500]
