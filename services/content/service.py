"""Content use cases and the decisions behind them: what may be generated, and how events move state."""

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
from contracts.errors import WorkerErrorCode
from contracts.events import (
    AvatarEvent,
    EventPayload,
    EventType,
    GenerationCompleted,
    GenerationFailed,
    GenerationParams,
    GenerationRequested,
    GenerationStarted,
    LoraEvent,
    LoraRef,
)
from contracts.topology import CONTENT_GENERATION_RESULTS, CONTENT_IDENTITY_EVENTS, SERVICE_CONTENT, event_source
from contracts.worker import MAX_SEED
from services.common.events import new_event
from services.common.http_errors import ConflictError, FieldError, InvalidRequestError, NotFoundError
from services.common.inbox import mark_processed
from services.common.outbox import add_to_outbox
from services.content import repository
from services.content.models import (
    AvatarProjection,
    Generation,
    GenerationStatus,
    LoraProjection,
    LoraState,
    inbox_table,
    outbox_table,
)
from services.content.schemas import GenerateRequest

log = logging.getLogger(__name__)

SOURCE = event_source(SERVICE_CONTENT)
TERMINAL_STATUSES = frozenset({GenerationStatus.COMPLETED, GenerationStatus.FAILED})
_RESULT_STATUS = {
    EventType.GENERATION_STARTED: GenerationStatus.RUNNING,
    EventType.GENERATION_COMPLETED: GenerationStatus.COMPLETED,
    EventType.GENERATION_FAILED: GenerationStatus.FAILED,
}


class ImageLinks(Protocol):
    """What content needs from object storage to hand out image URLs (ObjectStorage fits)."""

    def public_url(self, key: str) -> str | None: ...

    async def presign_get(self, key: str, ttl_seconds: int) -> str: ...


class UnexpectedEventError(ValueError):
    """An event this consumer cannot apply, now or ever (unknown generation, foreign type)."""


@dataclass(frozen=True)
class ContentPolicy:
    """GENERATION_DEADLINE_SECONDS and CONTENT_IMAGE_URL_TTL_SECONDS."""

    deadline_seconds: int
    image_url_ttl_seconds: int


@dataclass(frozen=True)
class GenerationView:
    """A generation with the download URL of its image (made now, never stored)."""

    generation: Generation
    image_url: str | None


@dataclass(frozen=True)
class AvatarStatus:
    """A projected avatar and whether a generation for it would be accepted."""

    avatar: AvatarProjection
    ready: bool


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def random_seed() -> int:
    """A seed for a request that gave none."""
    return random.randint(0, MAX_SEED)


# Decisions: pure functions over rows and events.


def status_after(current: GenerationStatus, event_type: EventType) -> GenerationStatus | None:
    """The status a result event moves a generation to, or None when it changes nothing.

    Only forward: started moves queued to running; completed and failed end any open generation;
    nothing leaves a terminal state (a late started after completed changes nothing).
    """
    target = _RESULT_STATUS.get(event_type)
    if target is None:
        raise ValueError(f"{event_type} is not a generation result")
    if current in TERMINAL_STATUSES:
        return None
    if target is GenerationStatus.RUNNING and current is not GenerationStatus.QUEUED:
        return None
    return target


def check_can_generate(
    avatar_id: str, avatar: AvatarProjection | None, lora: LoraProjection | None
) -> tuple[AvatarProjection, LoraProjection]:
    """The avatar and LoRA a generation would use; refuses an unknown or deleted avatar, or one without a LoRA."""
    if avatar is None:
        raise InvalidRequestError("unknown avatar", fields=[FieldError("avatar_id", "unknown avatar")])
    if avatar.deleted:
        raise InvalidRequestError("avatar was deleted", fields=[FieldError("avatar_id", "avatar was deleted")])
    if lora is None or lora.status != LoraState.READY.value or lora.avatar_id != avatar_id:
        reason = "avatar has no ready LoRA yet"
        raise ConflictError(reason, fields=[FieldError("avatar_id", reason)])
    return avatar, lora


def avatar_is_ready(avatar: AvatarProjection, lora: LoraProjection | None) -> bool:
    """Whether a generation for this avatar would be accepted now."""
    try:
        check_can_generate(avatar.id, avatar, lora)
    except (InvalidRequestError, ConflictError):
        return False
    return True


def build_generation_requested(
    generation_id: uuid.UUID,
    request: GenerateRequest,
    avatar: AvatarProjection,
    lora: LoraProjection,
    *,
    seed: int,
    now: datetime,
    deadline_seconds: int,
) -> GenerationRequested:
    """The generation.requested payload: the LoRA by object key (never a URL), defaults filled in."""
    return GenerationRequested(
        generation_id=str(generation_id),
        owner_id=avatar.owner_id,
        avatar_id=avatar.id,
        lora=LoraRef(
            lora_model_id=lora.id,
            object_key=lora.object_key,
            sha256=lora.sha256,
            scale=lora.default_scale if request.lora_scale is None else request.lora_scale,
        ),
        params=GenerationParams(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            steps=request.steps,
            cfg=request.cfg,
            seed=seed,
        ),
        requested_at=now,
        deadline=now + timedelta(seconds=deadline_seconds),
    )


def avatar_event_applies(row: AvatarProjection | None, event_type: EventType, event_time: datetime) -> bool:
    """Whether an avatar.* event changes the projection: deletion is final, and older news never wins."""
    if row is None:
        return True
    if row.deleted:
        return False
    return event_type is EventType.AVATAR_DELETED or event_time >= row.source_time


def lora_event_applies(row: LoraProjection | None) -> bool:
    """Whether a lora.* event changes the projection: retirement is final."""
    return row is None or row.status != LoraState.RETIRED.value


def apply_result(generation: Generation, payload: EventPayload, event_type: EventType, now: datetime) -> bool:
    """Move a generation forward with a result event; False when the event changes nothing."""
    current = GenerationStatus(generation.status)
    if current in TERMINAL_STATUSES:
        return False
    target = status_after(current, event_type)
    if isinstance(payload, GenerationStarted):
        generation.attempts = max(generation.attempts, payload.attempt)
    elif isinstance(payload, GenerationCompleted):
        generation.attempts = max(generation.attempts, payload.attempts)
        generation.image = payload.image.model_dump(mode="json")
        generation.generation_time_seconds = payload.generation_time_seconds
        generation.timings = payload.timings.model_dump(mode="json") if payload.timings else None
        generation.model_info = payload.model_info.model_dump(mode="json")
    elif isinstance(payload, GenerationFailed):
        generation.attempts = max(generation.attempts, payload.attempts)
        generation.error = {
            "error_code": payload.error_code,
            "error": payload.error,
            "retryable": payload.retryable,
            "details": payload.details,
        }
    else:
        raise UnexpectedEventError(f"{type(payload).__name__} is not a generation result")
    if target is not None:
        generation.status = target.value
    generation.updated_at = now
    return True


def time_out(generation: Generation, now: datetime) -> bool:
    """Fail an open generation that outlived its deadline with TIMEOUT; False when it is already terminal."""
    if GenerationStatus(generation.status) in TERMINAL_STATUSES:
        return False
    generation.status = GenerationStatus.FAILED.value
    generation.error = {
        "error_code": WorkerErrorCode.TIMEOUT.value,
        "error": "no result before the generation's deadline",
        "retryable": True,
        "details": {"deadline": generation.deadline.isoformat()},
    }
    generation.updated_at = now
    return True


class ContentService:
    """Generations and the avatar projection; each change and its events commit together."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        images: ImageLinks,
        policy: ContentPolicy,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
        seed_source: Callable[[], int] = random_seed,
    ) -> None:
        self._sessions = sessions
        self._images = images
        self._policy = policy
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock
        self._seed_source = seed_source

    async def request_generation(self, request: GenerateRequest) -> Generation:
        """Record a queued generation and its generation.requested event in one transaction."""
        avatar_id = str(request.avatar_id)
        now = self._clock()
        async with self._sessions() as session, session.begin():
            found = await repository.get_avatar(session, avatar_id)
            active = found.active_lora_id if found is not None else None
            lora = await repository.get_lora(session, active) if active else None
            avatar, lora = check_can_generate(avatar_id, found, lora)
            seed = request.seed if request.seed is not None else self._seed_source()
            generation_id = uuid.uuid4()
            payload = build_generation_requested(
                generation_id,
                request,
                avatar,
                lora,
                seed=seed,
                now=now,
                deadline_seconds=self._policy.deadline_seconds,
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
            )
            session.add(generation)
            event = new_event(payload, source=SOURCE, subject=str(generation_id), correlation_id=str(generation_id))
            await add_to_outbox(session, outbox_table, event)
        self._on_commit()
        log.info("generation %s queued for avatar %s", generation_id, avatar_id)
        return generation

    async def get_generation(self, generation_id: uuid.UUID) -> GenerationView:
        """The generation and, once completed, a URL for its image."""
        async with self._sessions() as session:
            generation = await repository.get_generation(session, generation_id)
        if generation is None:
            raise NotFoundError("unknown generation")
        return GenerationView(generation, await self._image_url(generation))

    async def avatar_status(self, avatar_id: uuid.UUID) -> AvatarStatus:
        """What the projection knows of an avatar; NotFoundError until identity's events arrived."""
        async with self._sessions() as session:
            avatar = await repository.get_avatar(session, str(avatar_id))
            if avatar is None:
                raise NotFoundError("unknown avatar")
            lora = await repository.get_lora(session, avatar.active_lora_id) if avatar.active_lora_id else None
        return AvatarStatus(avatar, avatar_is_ready(avatar, lora))

    async def apply_identity_event(self, envelope: EventEnvelope, payload: EventPayload) -> None:
        """Project an avatar.* or lora.* event, once (inbox), in one transaction."""
        event_type = EventType(envelope.type)
        async with self._sessions() as session, session.begin():
            if not await mark_processed(session, inbox_table, envelope.id, CONTENT_IDENTITY_EVENTS):
                return
            if isinstance(payload, AvatarEvent):
                await self._project_avatar(session, payload, event_type, envelope.time)
            elif isinstance(payload, LoraEvent):
                await self._project_lora(session, payload, event_type)
            else:
                raise UnexpectedEventError(f"{envelope.type} is not an identity event")

    async def apply_generation_result(self, envelope: EventEnvelope, payload: EventPayload) -> None:
        """Move a generation forward with a generation.* result event, once (inbox), in one transaction."""
        event_type = EventType(envelope.type)
        if event_type not in _RESULT_STATUS:
            raise UnexpectedEventError(f"{envelope.type} is not a generation result")
        generation_id = _generation_id(payload)
        async with self._sessions() as session, session.begin():
            if not await mark_processed(session, inbox_table, envelope.id, CONTENT_GENERATION_RESULTS):
                return
            generation = await repository.get_generation(session, generation_id, for_update=True)
            if generation is None:
                raise UnexpectedEventError(f"{envelope.type} for unknown generation {generation_id}")
            changed = apply_result(generation, payload, event_type, self._clock())
        log.info("generation %s: %s %s", generation_id, envelope.type, "applied" if changed else "changed nothing")

    async def fail_overdue(self, grace_seconds: float, limit: int = 100) -> int:
        """Fail (TIMEOUT) up to `limit` open generations whose deadline passed more than grace_seconds ago."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            overdue = await repository.overdue_generations(session, now - timedelta(seconds=grace_seconds), limit)
            failed = [generation.id for generation in overdue if time_out(generation, now)]
        for generation_id in failed:
            log.warning("generation %s failed: no result before its deadline", generation_id)
        return len(failed)

    async def _project_avatar(
        self, session: AsyncSession, payload: AvatarEvent, event_type: EventType, event_time: datetime
    ) -> None:
        row = await repository.get_avatar(session, payload.avatar_id, for_update=True)
        if not avatar_event_applies(row, event_type, event_time):
            return
        if row is None:
            row = AvatarProjection(id=payload.avatar_id, deleted=False)
            session.add(row)
        row.owner_id = payload.owner_id
        row.name = payload.name
        row.active_lora_id = payload.active_lora_model_id
        row.deleted = event_type is EventType.AVATAR_DELETED
        row.source_time = event_time
        row.updated_at = self._clock()

    async def _project_lora(self, session: AsyncSession, payload: LoraEvent, event_type: EventType) -> None:
        row = await repository.get_lora(session, payload.lora_model_id, for_update=True)
        if not lora_event_applies(row):
            return
        if row is None:
            row = LoraProjection(id=payload.lora_model_id)
            session.add(row)
        row.avatar_id = payload.avatar_id
        row.owner_id = payload.owner_id
        row.object_key = payload.object_key
        row.sha256 = payload.sha256
        row.size_bytes = payload.size_bytes
        row.base_model = payload.base_model
        row.default_scale = payload.default_scale
        retired = event_type is EventType.LORA_RETIRED
        row.status = (LoraState.RETIRED if retired else LoraState.READY).value
        row.updated_at = self._clock()

    async def _image_url(self, generation: Generation) -> str | None:
        if not generation.image or GenerationStatus(generation.status) is not GenerationStatus.COMPLETED:
            return None
        key = str(generation.image["object_key"])
        return self._images.public_url(key) or await self._images.presign_get(key, self._policy.image_url_ttl_seconds)


def _generation_id(payload: EventPayload) -> uuid.UUID:
    raw = getattr(payload, "generation_id", None)
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise UnexpectedEventError(f"generation id {str(raw)[:64]!r} was never issued by content") from None
