"""Content's event handlers: identity events into the projection, generation results into the rows, requesting
services' commands into generations."""

from __future__ import annotations

from contracts.events import GenerationSubmit
from services.common.messaging.consumer import EventHandler, ForgedEventError, PermanentError, ReceivedEvent
from services.content.command_trust import CommandTrust
from services.content.commands import SubmitCommands
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


def generation_submits_handler(commands: SubmitCommands, trust: CommandTrust) -> EventHandler:
    """Handles `content.generation-submits`: each generation.submit (its source and broker user checked by the
    consumer with `trust`) admitted as the API admits a submit, and answered."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationSubmit):
            # Only generation.submit is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-submits queue")
        try:
            requester = trust.requester(event.envelope)
        except ValueError as error:  # only when the consumer ran without `trust` as its source check
            raise PermanentError(str(error)) from error
        await commands.handle(event.envelope, event.payload, requester)

    return handle
