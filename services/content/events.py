"""Content's outgoing events (generation.requested, generation.canceled, and its answers to requesting services):
into the outbox, in the caller's transaction."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import EventPayload, GenerationReply, event_type_of
from contracts.topology import SERVICE_CONTENT, event_source, reply_routing_key
from services.common.messaging.events import new_event
from services.common.messaging.outbox import add_to_outbox
from services.content import replies
from services.content.models import Generation, outbox_table
from services.content.replies import CommandOrigin

SOURCE = event_source(SERVICE_CONTENT)


async def emit(session: AsyncSession, payload: EventPayload, generation_id: uuid.UUID) -> None:
    """Add a generation's event to the outbox; the relay publishes it once the transaction commits."""
    event = new_event(payload, source=SOURCE, subject=str(generation_id), correlation_id=str(generation_id))
    await add_to_outbox(session, outbox_table, event)


async def emit_reply(session: AsyncSession, payload: GenerationReply, subject: str) -> None:
    """Add an answer to a requesting service to the outbox, under its routing key (`<type>.<requester>`), with the
    command's correlation as `correlationid`; `subject` is the generation's id (the command's for a rejection)."""
    event = new_event(payload, source=SOURCE, subject=subject, correlation_id=payload.correlation_id)
    key = reply_routing_key(event_type_of(payload), payload.requester)
    await add_to_outbox(session, outbox_table, event, routing_key=key)


async def emit_finished(session: AsyncSession, generation: Generation, origin: CommandOrigin | None = None) -> bool:
    """Add generation.finished for a final generation a command made (to `origin`, default the command that made
    it); False when none is due (not final, or made by the API)."""
    payload = replies.finished(generation, origin)
    if payload is None:
        return False
    await emit_reply(session, payload, str(generation.id))
    return True
