"""The owner's cancel: an unfinished generation ends as canceled at once, generation.canceled tells the gateway (and
generation.finished the requesting service whose command made it)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import GenerationCanceled
from services.common.http.errors import NotFoundError
from services.common.observability.metrics import ServiceMetrics
from services.content import decisions, events, repository
from services.content.changes import ChangeFeed
from services.content.clock import Clock, utc_now
from services.content.metrics import GenerationMetrics
from services.content.reads import GenerationReads, GenerationView

log = logging.getLogger(__name__)


class OwnerCancel:
    """Cancels by a generation's owner; the status, the event and the change notice commit together."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reads: GenerationReads,
        changes: ChangeFeed,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._reads = reads
        self._changes = changes
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock
        self._metrics = GenerationMetrics(metrics)

    async def cancel(self, owner_id: str, generation_id: uuid.UUID) -> GenerationView:
        """End the owner's unfinished generation as canceled at once and emit generation.canceled; 409 when it
        has already finished."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            generation = await repository.get_generation(session, generation_id, for_update=True)
            if generation is None or generation.owner_id != owner_id:
                raise NotFoundError("unknown generation")
            status_before, started_before = generation.status, generation.started_at
            decisions.cancel(generation, now)
            payload = GenerationCanceled(
                generation_id=str(generation.id),
                owner_id=generation.owner_id,
                avatar_id=generation.avatar_id,
                canceled_at=now,
            )
            await events.emit(session, payload, generation.id)
            # A requesting service's command made it: the service learns it ended (generation.finished).
            await events.emit_finished(session, generation)
            await self._changes.announce(session, str(generation.id))
        self._on_commit()
        self._metrics.changed(generation, status_before, started_before)
        log.info("generation %s canceled by its owner", generation_id)
        return await self._reads.view(generation)
