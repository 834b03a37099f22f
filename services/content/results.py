"""Applying the gateway's result events (generation.started/completed/failed): each once, only forward."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import EventPayload, EventType
from contracts.topology import CONTENT_GENERATION_RESULTS
from services.common.observability.metrics import ServiceMetrics
from services.content import decisions, events, replies, repository
from services.content.changes import ChangeFeed
from services.content.clock import Clock, utc_now
from services.content.decisions import UnexpectedEventError
from services.content.inbox import mark_processed
from services.content.metrics import GenerationMetrics
from services.content.models import inbox_table
from services.content.sweeper import SweeperChores

log = logging.getLogger(__name__)


class ResultApplier:
    """Moves generations forward with result events; the change, the inbox mark and the change notice commit
    together."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        changes: ChangeFeed,
        chores: SweeperChores,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._changes = changes
        # Called after a commit that wrote outbox rows (a requesting service's generation.finished): wakes the relay.
        self._on_commit = on_commit
        # A late image of a canceled generation is deleted at once, with the sweeper's own chore.
        self._chores = chores
        self._clock = clock
        self._metrics = GenerationMetrics(metrics)

    async def apply(self, envelope: EventEnvelope, payload: EventPayload) -> None:
        """Move a generation forward with a generation.* result event, once (inbox), in one transaction; the
        result that makes a command's generation final answers its requesting service (generation.finished)."""
        event_type = EventType(envelope.type)
        if event_type not in decisions.RESULT_STATUS:
            raise UnexpectedEventError(f"{envelope.type} is not a generation result")
        generation_id = _generation_id(payload)
        async with self._sessions() as session, session.begin():
            if not await mark_processed(session, inbox_table, envelope.id, CONTENT_GENERATION_RESULTS):
                return
            generation = await repository.get_generation(session, generation_id, for_update=True)
            if generation is None:
                raise UnexpectedEventError(f"{envelope.type} for unknown generation {generation_id}")
            status_before, started_before = generation.status, generation.started_at
            changed = decisions.apply_result(generation, payload, event_type, self._clock())
            if changed:
                await self._changes.announce(session, str(generation_id))
            answered = replies.became_final(status_before, generation) and await events.emit_finished(
                session, generation
            )
        if answered:
            self._on_commit()
        self._metrics.changed(generation, status_before, started_before)
        log.info("generation %s: %s %s", generation_id, envelope.type, "applied" if changed else "changed nothing")
        if generation.image_purge_pending:
            try:
                await self._chores.purge_late_images()
            except Exception:  # the event is applied; the sweeper deletes the image later
                log.exception("purging late images failed; the sweeper will try again")


def _generation_id(payload: EventPayload) -> uuid.UUID:
    raw = getattr(payload, "generation_id", None)
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise UnexpectedEventError(f"generation id {str(raw)[:64]!r} was never issued by content") from None
