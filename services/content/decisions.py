"""Generation decisions (pure functions over rows and events): who may generate, and how status moves."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

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
from contracts.object_keys import generation_image_key, image_key_problem, lora_key_problem
from services.common.http.errors import ConflictError, FieldError, NotFoundError
from services.content.models import AvatarProjection, Generation, GenerationStatus, LoraProjection, LoraState
from services.content.schemas import GenerateRequest

TERMINAL_STATUSES = frozenset({GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELED})
RESULT_STATUS = {
    EventType.GENERATION_STARTED: GenerationStatus.RUNNING,
    EventType.GENERATION_COMPLETED: GenerationStatus.COMPLETED,
    EventType.GENERATION_FAILED: GenerationStatus.FAILED,
}
# The order of the statuses a generation passes through; the SSE stream numbers its events with it.
STATUS_STEP = {GenerationStatus.QUEUED: 1, GenerationStatus.RUNNING: 2} | {status: 3 for status in TERMINAL_STATUSES}


class UnexpectedEventError(ValueError):
    """An event this consumer cannot apply, now or ever (unknown generation, foreign type)."""


class ForgedFieldError(UnexpectedEventError):
    """An event whose field disagrees with what content derives or already knows (an image key that is not the
    generation's, an avatar that changes owner): applied never, dead-lettered as forged."""


@dataclass(frozen=True)
class StatusStep:
    """A status a generation reached, its place in the order, and when."""

    step: int
    status: GenerationStatus
    at: datetime


def is_terminal(generation: Generation) -> bool:
    """Whether the generation reached its final status."""
    return GenerationStatus(generation.status) in TERMINAL_STATUSES


def status_after(current: GenerationStatus, event_type: EventType) -> GenerationStatus | None:
    """The status a result event moves a generation to, or None when it changes nothing.

    Only forward: started moves queued to running; completed and failed end any open generation;
    nothing leaves a terminal state (a late started after completed changes nothing, nor does any result
    after a cancel).
    """
    target = RESULT_STATUS.get(event_type)
    if target is None:
        raise ValueError(f"{event_type} is not a generation result")
    if current in TERMINAL_STATUSES:
        return None
    if target is GenerationStatus.RUNNING and current is not GenerationStatus.QUEUED:
        return None
    return target


def check_can_generate(
    owner_id: str, avatar: AvatarProjection | None, lora: LoraProjection | None
) -> tuple[AvatarProjection, LoraProjection]:
    """The avatar and LoRA a generation would use. Someone else's avatar is as unknown as a missing one (404);
    a deleted avatar too; an avatar without a ready LoRA is a 409."""
    if avatar is None or avatar.owner_id != owner_id or avatar.deleted:
        reason = "no such avatar (or not yet known to content)"
        raise NotFoundError("unknown avatar", fields=[FieldError("avatar_id", reason)])
    if (
        lora is None
        or lora.status != LoraState.READY.value
        or lora.avatar_id != avatar.id
        or lora.owner_id != avatar.owner_id
    ):
        reason = "avatar has no ready LoRA yet"
        raise ConflictError(reason, fields=[FieldError("avatar_id", reason)])
    return avatar, lora


def avatar_is_ready(avatar: AvatarProjection, lora: LoraProjection | None) -> bool:
    """Whether a generation for this avatar would be accepted now."""
    try:
        check_can_generate(avatar.owner_id, avatar, lora)
    except (NotFoundError, ConflictError):
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
    """Move a generation forward with a result event; False when the event changes nothing.

    A result that comes after a cancel is recorded (its image is marked for deletion) but the generation stays
    canceled; a result after completed or failed changes nothing at all.
    """
    current = GenerationStatus(generation.status)
    canceled = current is GenerationStatus.CANCELED
    if current in TERMINAL_STATUSES and not canceled:
        return False
    target = status_after(current, event_type)
    if isinstance(payload, GenerationStarted):
        moves = target is not None and target is not current
        if not moves and payload.attempt <= generation.attempts and (generation.started_at or canceled):
            # The same start again (a duplicate under another event id): nothing a watcher could see changes.
            return False
        generation.attempts = max(generation.attempts, payload.attempt)
        if generation.started_at is None and not canceled:
            generation.started_at = now
    elif isinstance(payload, GenerationCompleted):
        check_image_is_the_generations(generation, payload)
        generation.attempts = max(generation.attempts, payload.attempts)
        generation.image = payload.image.model_dump(mode="json")
        generation.generation_time_seconds = payload.generation_time_seconds
        generation.timings = payload.timings.model_dump(mode="json") if payload.timings else None
        generation.model_info = payload.model_info.model_dump(mode="json")
        # Nobody will ever be shown this image: it is deleted from storage.
        generation.image_purge_pending = canceled
        # The result may be applied before its generation.started (results are handled concurrently).
        if generation.started_at is None and not canceled:
            generation.started_at = payload.started_at
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
        if target in TERMINAL_STATUSES:
            generation.finished_at = now
    generation.updated_at = now
    return True


def check_image_is_the_generations(generation: Generation, payload: GenerationCompleted) -> None:
    """Refuse (ForgedFieldError) an image that is not at the key derived from the generation's id: content reads,
    hands out and deletes only the object it derives, whatever an event says."""
    problem = image_key_problem(payload.image.object_key, generation.id)
    if problem is not None:
        raise ForgedFieldError(f"generation.completed for {generation.id}: {problem}")


def image_key(generation: Generation) -> str:
    """Where the generation's image is (derived from its id: the stored event's key is never used)."""
    return generation_image_key(generation.id)


def check_avatar_event(row: AvatarProjection | None, payload: AvatarEvent) -> None:
    """Refuse (ForgedFieldError) an avatar event that gives a known avatar another owner: an avatar's owner never
    changes, so such an event would hand one tenant's avatar (and its LoRA) to another."""
    if row is not None and row.owner_id != payload.owner_id:
        raise ForgedFieldError(f"avatar {payload.avatar_id} belongs to another owner than the event says")


def check_lora_event(row: LoraProjection | None, avatar: AvatarProjection | None, payload: LoraEvent) -> None:
    """Refuse (ForgedFieldError) a lora.* event whose object key is not the content address of its sha256, whose
    owner is not its avatar's owner, or that moves a known LoRA to another avatar or owner."""
    problem = lora_key_problem(payload.object_key, payload.sha256)
    if problem is not None:
        raise ForgedFieldError(f"lora {payload.lora_model_id}: {problem}")
    if avatar is not None and avatar.owner_id != payload.owner_id:
        raise ForgedFieldError(f"lora {payload.lora_model_id}: its owner is not the owner of avatar {avatar.id}")
    if row is not None and (row.avatar_id, row.owner_id) != (payload.avatar_id, payload.owner_id):
        raise ForgedFieldError(f"lora {payload.lora_model_id} belongs to another avatar or owner than the event says")


def time_out(generation: Generation, now: datetime) -> bool:
    """Fail an open generation that outlived its deadline with TIMEOUT; False when it is already terminal."""
    if is_terminal(generation):
        return False
    generation.status = GenerationStatus.FAILED.value
    generation.error = {
        "error_code": WorkerErrorCode.TIMEOUT.value,
        "error": "no result before the generation's deadline",
        "retryable": True,
        "details": {"deadline": generation.deadline.isoformat()},
    }
    generation.finished_at = now
    generation.updated_at = now
    return True


def cancel(generation: Generation, now: datetime) -> None:
    """End an unfinished generation as canceled; a finished one cannot be (409)."""
    if is_terminal(generation):
        raise ConflictError(f"the generation is already {generation.status}", reason_code="GENERATION_FINISHED")
    generation.status = GenerationStatus.CANCELED.value
    generation.finished_at = now
    generation.updated_at = now


def status_steps(generation: Generation) -> list[StatusStep]:
    """The statuses the generation went through, in order, with their times (running only when it was seen)."""
    steps = [StatusStep(1, GenerationStatus.QUEUED, generation.created_at)]
    if generation.started_at is not None:
        steps.append(StatusStep(2, GenerationStatus.RUNNING, generation.started_at))
    status = GenerationStatus(generation.status)
    if status in TERMINAL_STATUSES:
        steps.append(StatusStep(3, status, generation.finished_at or generation.updated_at))
    return steps


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """end − start in seconds (never negative), or None when either is unknown."""
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())
