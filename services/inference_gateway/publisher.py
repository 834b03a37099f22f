"""Adapter: result events as CloudEvents from the gateway, published with broker confirms."""

from __future__ import annotations

from contracts.events import EventPayload
from contracts.topology import SERVICE_INFERENCE_GATEWAY, event_source
from services.common.broker import Publisher
from services.common.events import new_event


class BrokerResultPublisher:
    """Wraps a payload in an event (subject and correlation id = the generation id) and publishes it."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._source = event_source(SERVICE_INFERENCE_GATEWAY)

    async def publish(self, payload: EventPayload, *, generation_id: str, traceparent: str | None) -> None:
        """Returns once the broker confirmed the event; raises otherwise (the request is then redelivered)."""
        envelope = new_event(payload, source=self._source, subject=generation_id, correlation_id=generation_id)
        await self._publisher.publish_event(envelope, traceparent=traceparent)
