"""Content's event handlers: identity events into the projection, generation results into the rows."""

from __future__ import annotations

from services.common.messaging.consumer import EventHandler, ForgedEventError, PermanentError, ReceivedEvent
from services.content.decisions import ForgedFieldError, UnexpectedEventError
from services.content.projection import IdentityProjection
from services.content.results import ResultApplier


def identity_events_handler(projection: IdentityProjection) -> EventHandler:
    """Handles `content.identity-events`: avatar.* and lora.* into the projection."""

    async def handle(event: ReceivedEvent) -> None:
        try:
            await projection.apply(event.envelope, event.payload)
        except ForgedFieldError as error:
            raise ForgedEventError(str(error)) from error
        except UnexpectedEventError as error:
            # Retrying cannot help: straight to the dead-letter queue.
            raise PermanentError(str(error)) from error

    return handle


def generation_results_handler(results: ResultApplier) -> EventHandler:
    """Handles `content.generation-results`: generation.started/completed/failed into the generation rows."""

    async def handle(event: ReceivedEvent) -> None:
        try:
            await results.apply(event.envelope, event.payload)
        except ForgedFieldError as error:
            raise ForgedEventError(str(error)) from error
        except UnexpectedEventError as error:
            raise PermanentError(str(error)) from error

    return handle
