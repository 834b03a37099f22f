"""Generation use cases: submit (admission, idempotency), read, list, cancel, results, deadlines, late images."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import EventPayload, EventType, GenerationCanceled
from contracts.topology import CONTENT_GENERATION_RESULTS, SERVICE_CONTENT, event_source
from contracts.worker import MAX_SEED
from services.common.changes import ChangeFeed
from services.common.db import read_session
from services.common.events import new_event
from services.common.http_errors import FieldError, InvalidRequestError, NotFoundError
from services.common.inbox import mark_processed
from services.common.metrics import ServiceMetrics
from services.common.outbox import add_to_outbox
from services.common.pagination import Cursor, Page, page_of
from services.content import admission, decisions, repository
from services.content.admission import AdmissionLimits
from services.content.decisions import UnexpectedEventError
from services.content.metrics import GenerationMetrics
from services.content.models import (
    Generation,
    GenerationStatus,
    IdempotencyKey,
    OwnerQuota,
    inbox_table,
    outbox_table,
)
from services.content.schemas import GenerateRequest

log = logging.getLogger(__name__)

SOURCE = event_source(SERVICE_CONTENT)


class ImageStore(Protocol):
    """What content needs from object storage: image URLs, and deleting an image nobody may see (ObjectStorage)."""

    def public_url(self, key: str) -> str | None: ...

    async def presign_get(self, key: str, ttl_seconds: int) -> str: ...

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class GenerationPolicy:
    """GENERATION_DEADLINE_SECONDS and CONTENT_IMAGE_URL_TTL_SECONDS."""

    deadline_seconds: int
    image_url_ttl_seconds: int


@dataclass(frozen=True)
class GenerationView:
    """A generation with the download URL of its image (made now, never stored)."""

    generation: Generation
    image_url: str | None


@dataclass(frozen=True)
class Submitted:
    """A submit's generation, and whether it is an earlier submit's (same Idempotency-Key and body)."""

    view: GenerationView
    replayed: bool


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def random_seed() -> int:
    """A seed for a request that gave none."""
    return random.randint(0, MAX_SEED)


class GenerationService:
    """Generations of one owner at a time; each change, its events and its change notice commit together."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        images: ImageStore,
        policy: GenerationPolicy,
        limits: AdmissionLimits,
        changes: ChangeFeed,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
        seed_source: Callable[[], int] = random_seed,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = GenerationMetrics(metrics)
        self._images = images
        self._policy = policy
        self._limits = limits
        self._changes = changes
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock
        self._seed_source = seed_source

    async def submit(self, owner_id: str, request: GenerateRequest, idempotency_key: str | None = None) -> Submitted:
        """Admit and record a queued generation with its generation.requested event, in one transaction.

        The owner's quota row is locked first, so the rate limit, the in-flight cap and the Idempotency-Key hold
        across replicas and concurrent submits. A refused submit rolls back: no row, no event.
        """
        admission.check_request_fits(request, self._limits)
        digest = admission.request_digest(request)
        now = self._clock()
        earlier: Generation | None = None
        async with self._sessions() as session, session.begin():
            quota = await repository.lock_owner_quota(session, owner_id, full_bucket=self._limits.burst, now=now)
            if idempotency_key is not None:
                earlier = await self._earlier_submit(session, owner_id, idempotency_key, digest, now)
            if earlier is None:
                generation = await self._admit(session, quota, owner_id, request, idempotency_key, digest, now)
        if earlier is not None:
            # Made after the transaction: the quota row is not held while an image URL is signed.
            return Submitted(await self._view(earlier), replayed=True)
        self._on_commit()
        self._metrics.submitted()
        log.info("generation %s queued for avatar %s", generation.id, generation.avatar_id)
        return Submitted(await self._view(generation), replayed=False)

    async def _admit(
        self,
        session: AsyncSession,
        quota: OwnerQuota,
        owner_id: str,
        request: GenerateRequest,
        idempotency_key: str | None,
        digest: str,
        now: datetime,
    ) -> Generation:
        """Rate, in-flight cap, avatar and LoRA; then the generation, its event, its key and the spent token."""
        tokens = admission.refilled_tokens(quota.tokens, quota.refilled_at, now, self._limits)
        admission.check_rate(tokens, self._limits)
        admission.check_in_flight(await repository.count_in_flight(session, owner_id), self._limits)
        generation = await self._queue(session, owner_id, request, now)
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

    async def get(self, owner_id: str, generation_id: uuid.UUID) -> GenerationView:
        """The owner's generation and, once completed, a URL for its image; 404 for anyone else's."""
        async with read_session(self._sessions) as session:
            generation = await repository.get_generation(session, generation_id)
        if generation is None or generation.owner_id != owner_id:
            raise NotFoundError("unknown generation")
        return await self._view(generation)

    async def get_unchecked(self, generation_id: uuid.UUID) -> GenerationView:
        """A generation by id alone, for a caller that proved its right another way (a signed stream link)."""
        async with read_session(self._sessions) as session:
            generation = await repository.get_generation(session, generation_id)
        if generation is None:
            raise NotFoundError("unknown generation")
        return await self._view(generation)

    async def list(
        self,
        owner_id: str,
        *,
        limit: int,
        cursor: str | None,
        avatar_id: uuid.UUID | None,
        status: GenerationStatus | None,
    ) -> Page[GenerationView]:
        """The owner's generations, newest first, one keyset page at a time."""
        after = Cursor.decode(cursor) if cursor is not None else None
        async with self._sessions() as session:
            rows = await repository.list_generations(
                session,
                owner_id,
                limit=limit + 1,
                after=after,
                avatar_id=str(avatar_id) if avatar_id is not None else None,
                statuses=(status.value,) if status is not None else (),
            )
        page = page_of(rows, limit)
        return Page([await self._view(row) for row in page.items], page.next_cursor)

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
            await self._emit(session, payload, generation.id)
            await self._changes.announce(session, str(generation.id))
        self._on_commit()
        self._metrics.changed(generation, status_before, started_before)
        log.info("generation %s canceled by its owner", generation_id)
        return await self._view(generation)

    async def apply_result(self, envelope: EventEnvelope, payload: EventPayload) -> None:
        """Move a generation forward with a generation.* result event, once (inbox), in one transaction."""
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
        self._metrics.changed(generation, status_before, started_before)
        log.info("generation %s: %s %s", generation_id, envelope.type, "applied" if changed else "changed nothing")
        if generation.image_purge_pending:
            try:
                await self.purge_late_images()
            except Exception:  # the event is applied; the sweeper deletes the image later
                log.exception("purging late images failed; the sweeper will try again")

    async def fail_overdue(self, grace_seconds: float, limit: int = 100) -> int:
        """Fail (TIMEOUT) up to `limit` open generations whose deadline passed more than grace_seconds ago."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            overdue = await repository.overdue_generations(session, now - timedelta(seconds=grace_seconds), limit)
            before = {generation.id: (generation.status, generation.started_at) for generation in overdue}
            timed_out = [generation for generation in overdue if decisions.time_out(generation, now)]
            failed = [generation.id for generation in timed_out]
            for generation_id in failed:
                await self._changes.announce(session, str(generation_id))
        for generation in timed_out:
            self._metrics.changed(generation, *before[generation.id])
        for generation_id in failed:
            log.warning("generation %s failed: no result before its deadline", generation_id)
        return len(failed)

    async def purge_late_images(self, limit: int = 100) -> int:
        """Delete images that came after their generation was canceled; how many were deleted. One that cannot
        be deleted now stays marked, and the next sweep tries again."""
        purged = 0
        async with self._sessions() as session, session.begin():
            for generation in await repository.images_to_purge(session, limit):
                try:
                    # The derived key, never the event's: a purge deletes this generation's image and nothing else.
                    await self._images.delete(decisions.image_key(generation))
                except Exception as error:  # storage may be briefly unreachable: the sweeper retries
                    log.warning(
                        "could not delete the late image of canceled generation %s: %s",
                        generation.id,
                        type(error).__name__,
                    )
                    continue
                generation.image_purge_pending = False
                purged += 1
        return purged

    async def forget_idempotency_keys(self) -> int:
        """Drop Idempotency-Keys older than their lifetime; how many were dropped."""
        before = self._clock() - timedelta(seconds=self._limits.idempotency_ttl_seconds)
        async with self._sessions() as session, session.begin():
            return await repository.delete_idempotency_keys_before(session, before)

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

    async def _queue(self, session: AsyncSession, owner_id: str, request: GenerateRequest, now: datetime) -> Generation:
        found = await repository.get_avatar(session, str(request.avatar_id))
        active = found.active_lora_id if found is not None else None
        lora = await repository.get_lora(session, active) if active else None
        avatar, lora = decisions.check_can_generate(owner_id, found, lora)
        seed = request.seed if request.seed is not None else self._seed_source()
        generation_id = uuid.uuid4()
        payload = decisions.build_generation_requested(
            generation_id, request, avatar, lora, seed=seed, now=now, deadline_seconds=self._policy.deadline_seconds
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
        )
        session.add(generation)
        await self._emit(session, payload, generation_id)
        await self._changes.announce(session, str(generation_id))
        return generation

    async def _emit(self, session: AsyncSession, payload: EventPayload, generation_id: uuid.UUID) -> None:
        event = new_event(payload, source=SOURCE, subject=str(generation_id), correlation_id=str(generation_id))
        await add_to_outbox(session, outbox_table, event)

    async def _view(self, generation: Generation) -> GenerationView:
        return GenerationView(generation, await self._image_url(generation))

    async def _image_url(self, generation: Generation) -> str | None:
        if not generation.image or GenerationStatus(generation.status) is not GenerationStatus.COMPLETED:
            return None
        key = decisions.image_key(generation)
        return self._images.public_url(key) or await self._images.presign_get(key, self._policy.image_url_ttl_seconds)


def _generation_id(payload: EventPayload) -> uuid.UUID:
    raw = getattr(payload, "generation_id", None)
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise UnexpectedEventError(f"generation id {str(raw)[:64]!r} was never issued by content") from None
