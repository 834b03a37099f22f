"""Event handler for the gateway's queue: each generation.requested goes to the service."""

from __future__ import annotations

from contracts.events import GenerationRequested
from services.common.broker import EventHandler, PermanentError, ReceivedEvent
from services.inference_gateway.service import GenerationService


def generation_requested_handler(service: GenerationService) -> EventHandler:
    """The Consumer acks after this returns, i.e. after the result event was confirmed."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationRequested):
            # Only generation.requested is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-requested queue")
        await service.handle(event.payload, traceparent=event.traceparent)

    return handle
