"""Submitting a generation: admission, the owner's rate and in-flight quota, Idempotency-Key replays, and the
queued row with its generation.requested event (one admission for the HTTP route and the generation.submit command)."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.worker import MAX_SEED
from services.common.http.errors import FieldError, InvalidRequestError
from services.common.observability.metrics import ServiceMetrics
from services.content import admission, decisions, events, repository
from services.content.admission import AdmissionLimits
from services.content.changes import ChangeFeed
from services.content.clock import Clock, utc_now
from services.content.metrics import GenerationMetrics
from services.content.models import Generation, GenerationStatus, IdempotencyKey, OwnerQuota
from services.content.reads import GenerationReads, GenerationView
from services.content.replies import CommandOrigin
from services.content.schemas import GenerateRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """A submit's generation, and whether it is an earlier submit's (same Idempotency-Key and body)."""

    view: GenerationView
    replayed: bool


@dataclass(frozen=True)
class Admitted:
    """What one admission gave, before its transaction commits: a new generation, or an earlier submit's."""

    generation: Generation
    replayed: bool


def random_seed() -> int:
    """A seed for a request that gave none."""
    return random.randint(0, MAX_SEED)


class Submissions:
    """Submits of one owner at a time; the row, its event, its change notice and the spent token commit together.

    Every way in admits through `admit`: the HTTP route (`submit`) and the generation.submit command
    (services/content/commands.py), so that both hold to the same rules."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reads: GenerationReads,
        limits: AdmissionLimits,
        changes: ChangeFeed,
        *,
        deadline_seconds: int,
        on_commit: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
        seed_source: Callable[[], int] = random_seed,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._reads = reads
        self._limits = limits
        self._changes = changes
        self._deadline_seconds = deadline_seconds
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock
        self._seed_source = seed_source
        self._metrics = GenerationMetrics(metrics)

    async def submit(self, owner_id: str, request: GenerateRequest, idempotency_key: str | None = None) -> Submitted:
        """Admit and record a queued generation with its generation.requested event, in one transaction.

        The owner's quota row is locked first, so the rate limit, the in-flight cap and the Idempotency-Key hold
        across replicas and concurrent submits. A refused submit rolls back: no row, no event.
        """
        # Also checked by admit; here first, so that a request outside the bounds takes no database connection.
        admission.check_request_fits(request, self._limits)
        now = self._clock()
        async with self._sessions() as session, session.begin():
            admitted = await self.admit(session, owner_id, request, idempotency_key, now=now)
        # Made after the transaction: the quota row is not held while an image URL is signed.
        self.committed(admitted)
        return Submitted(await self._reads.view(admitted.generation), replayed=admitted.replayed)

    async def admit(
        self,
        session: AsyncSession,
        owner_id: str,
        request: GenerateRequest,
        idempotency_key: str | None,
        *,
        now: datetime,
        origin: CommandOrigin | None = None,
    ) -> Admitted:
        """One submit's admission in the caller's transaction: the bounds and cost budget, the owner's quota row
        (locked), an earlier submit with the key, the rate, the in-flight cap, the avatar and its LoRA; then the
        generation, its generation.requested event, its key and the spent token. A refusal raises the API's
        DomainError (the caller's transaction must roll back: nothing of it may commit)."""
        admission.check_request_fits(request, self._limits)
        digest = admission.request_digest(request)
        quota = await repository.lock_owner_quota(session, owner_id, full_bucket=self._limits.burst, now=now)
        if idempotency_key is not None:
            earlier = await self._earlier_submit(session, owner_id, idempotency_key, digest, now)
            if earlier is not None:
                return Admitted(earlier, replayed=True)
        generation = await self._admit(session, quota, owner_id, request, idempotency_key, digest, now, origin)
        return Admitted(generation, replayed=False)

    def committed(self, admitted: Admitted) -> None:
        """After the admission's transaction committed: wake the relay and count a new generation."""
        if admitted.replayed:
            return
        self._on_commit()
        self._metrics.submitted()
        log.info("generation %s queued for avatar %s", admitted.generation.id, admitted.generation.avatar_id)

    async def _admit(
        self,
        session: AsyncSession,
        quota: OwnerQuota,
        owner_id: str,
        request: GenerateRequest,
        idempotency_key: str | None,
        digest: str,
        now: datetime,
        origin: CommandOrigin | None,
    ) -> Generation:
        """Rate, in-flight cap, avatar and LoRA; then the generation, its event, its key and the spent token."""
        tokens = admission.refilled_tokens(quota.tokens, quota.refilled_at, now, self._limits)
        admission.check_rate(tokens, self._limits)
        admission.check_in_flight(await repository.count_in_flight(session, owner_id), self._limits)
        generation = await self._queue(session, owner_id, request, now, origin)
        quota.tokens, quota.refilled_at = tokens - 1.0, now
        if idempotency_key is not None:
            session.add(
                IdempotencyKey(
                    owner_id=owner_id,
                    key=idempotency_key,
                    request_sha256=digest,
                    generation_id=generation.id,
                    created_at=now,
                )
            )
        return generation

    async def _earlier_submit(
        self, session: AsyncSession, owner_id: str, key: str, digest: str, now: datetime
    ) -> Generation | None:
        record = await repository.get_idempotency_key(session, owner_id, key)
        if record is None:
            return None
        if record.created_at < now - timedelta(seconds=self._limits.idempotency_ttl_seconds):
            await session.delete(record)  # expired: the key starts afresh
            await session.flush()
            return None
        if record.request_sha256 != digest:
            reason = "this key was used with another request body; use a new key for a new request"
            raise InvalidRequestError("Idempotency-Key reused", fields=[FieldError("Idempotency-Key", reason)])
        earlier = await repository.get_generation(session, record.generation_id)
        if earlier is None:  # its generation is gone (nothing deletes one today): the key starts afresh
            await session.delete(record)
            await session.flush()
        return earlier

    async def _queue(
        self,
        session: AsyncSession,
        owner_id: str,
        request: GenerateRequest,
        now: datetime,
        origin: CommandOrigin | None,
    ) -> Generation:
        found = await repository.get_avatar(session, str(request.avatar_id))
        active = found.active_lora_id if found is not None else None
        lora = await repository.get_lora(session, active) if active else None
        avatar, lora = decisions.check_can_generate(owner_id, found, lora)
        seed = request.seed if request.seed is not None else self._seed_source()
        generation_id = uuid.uuid4()
        payload = decisions.build_generation_requested(
            generation_id, request, avatar, lora, seed=seed, now=now, deadline_seconds=self._deadline_seconds
        )
        generation = Generation(
            id=generation_id,
            owner_id=avatar.owner_id,
            avatar_id=avatar.id,
            status=GenerationStatus.QUEUED.value,
            params=payload.params.model_dump(mode="json"),
            seed=seed,
            lora=payload.lora.model_dump(mode="json") if payload.lora else None,
            attempts=0,
            created_at=now,
            updated_at=now,
            deadline=payload.deadline,
            image_purge_pending=False,
            requested_by=origin.requester if origin else None,
            command_id=origin.command_id if origin else None,
            command_correlation=origin.correlation_id if origin else None,
        )
        session.add(generation)
        await events.emit(session, payload, generation_id)
        await self._changes.announce(session, str(generation_id))
        return generation
