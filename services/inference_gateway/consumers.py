"""Event handlers for the gateway's queues: generation.requested and generation.canceled go to the service."""

from __future__ import annotations

import logging

from contracts.events import GenerationCanceled, GenerationRequested
from services.common.consumer import EventHandler, PermanentError, ReceivedEvent
from services.inference_gateway.service import GenerationService

log = logging.getLogger(__name__)


def generation_requested_handler(service: GenerationService) -> EventHandler:
    """The Consumer acks after this returns, i.e. after the result event was confirmed."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationRequested):
            # Only generation.requested is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-requested queue")
        await service.handle(event.payload, traceparent=event.traceparent)

    return handle


def generation_canceled_handler(service: GenerationService) -> EventHandler:
    """Records the cancel: a request for that generation that has not started yet is not run, and one running
    in this process is stopped, on the worker too (GenerationService.note_canceled)."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationCanceled):
            # Only generation.canceled is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-canceled queue")
        service.note_canceled(event.payload.generation_id)
        log.info("generation %s canceled (%s)", event.payload.generation_id, event.payload.reason)

    return handle
