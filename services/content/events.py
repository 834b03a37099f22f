"""Content's outgoing events (generation.requested, generation.canceled): into the outbox, in the caller's
transaction."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import EventPayload
from contracts.topology import SERVICE_CONTENT, event_source
from services.common.messaging.events import new_event
from services.common.messaging.outbox import add_to_outbox
from services.content.models import outbox_table

SOURCE = event_source(SERVICE_CONTENT)


async def emit(session: AsyncSession, payload: EventPayload, generation_id: uuid.UUID) -> None:
    """Add a generation's event to the outbox; the relay publishes it once the transaction commits."""
    event = new_event(payload, source=SOURCE, subject=str(generation_id), correlation_id=str(generation_id))
    await add_to_outbox(session, outbox_table, event)
