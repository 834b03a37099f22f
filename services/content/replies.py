"""Content's answers to a requesting service (pure): generation.accepted, generation.rejected in the API's error
shape, and generation.finished once a generation its command made is final."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from contracts.events import (
    GenerationAccepted,
    GenerationFinished,
    GenerationRejected,
    ImageRef,
    RefusalDetails,
    RefusedField,
)
from services.common.http.errors import DomainError, FieldError, InvalidRequestError, validation_fields
from services.content.decisions import TERMINAL_STATUSES, is_terminal
from services.content.models import Generation, GenerationStatus

# The API's names of what a command carries elsewhere: a refusal names the command's own fields.
_COMMAND_FIELDS = {"Idempotency-Key": "idempotency_key"}
# The command's own fields (not the request's), named as they are.
COMMAND_FIELDS = frozenset({"owner_id", "idempotency_key", "correlation_id"})
# Where the API's body fields are in a command.
REQUEST_FIELD = "request"
# The API's message is a sentence over the fields, cut here (as `services.common.http.errors` cuts it).
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class CommandOrigin:
    """The requesting service whose generation.submit asks for a generation, the command's event id and its
    correlation: what every answer carries back."""

    requester: str
    command_id: str
    correlation_id: str


def invalid_request(error: ValidationError) -> InvalidRequestError:
    """The 422 the API answers for a body that fails validation, for the same failure of a command's request."""
    fields = validation_fields(error.errors())
    summary = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    message = f"invalid request: {summary}" if summary else "invalid request"
    return InvalidRequestError(message[:MAX_MESSAGE], fields=fields)


def command_field(field: str) -> str:
    """A field the API names, as the command names it: the body's are under `request`, a header is a field."""
    if field in _COMMAND_FIELDS:
        return _COMMAND_FIELDS[field]
    if field in COMMAND_FIELDS:
        return field
    return f"{REQUEST_FIELD}.{field}" if field != "body" else REQUEST_FIELD


def accepted(origin: CommandOrigin, owner_id: str, generation: Generation, *, replayed: bool) -> GenerationAccepted:
    """The answer to a command that queued `generation` (or whose key and request did earlier: `replayed`)."""
    return GenerationAccepted(
        requester=origin.requester,
        command_id=origin.command_id,
        correlation_id=origin.correlation_id,
        owner_id=owner_id,
        generation_id=str(generation.id),
        replayed=replayed,
    )


def rejected(origin: CommandOrigin, owner_id: str, refusal: DomainError) -> GenerationRejected:
    """The answer to a refused command: what the API answers for the same refusal (status, sentence, code, fields,
    reason code, Retry-After), the fields named as the command names them."""
    retry_after = refusal.headers.get("Retry-After")
    return GenerationRejected(
        requester=origin.requester,
        command_id=origin.command_id,
        correlation_id=origin.correlation_id,
        owner_id=owner_id,
        status=refusal.status_code,
        error=refusal.message[:MAX_MESSAGE],
        error_code=refusal.error_code,
        details=RefusalDetails(fields=_fields(refusal.fields), reason_code=refusal.reason_code),
        retry_after_seconds=int(retry_after) if retry_after else None,
    )


def finished(generation: Generation, origin: CommandOrigin | None = None) -> GenerationFinished | None:
    """generation.finished for a final generation a command made, to `origin` (default: the command that made it);
    None when it is not final or no command made it."""
    if not is_terminal(generation):
        return None
    status = GenerationStatus(generation.status)
    if origin is None:
        if generation.requested_by is None or generation.command_id is None:
            return None
        origin = CommandOrigin(
            generation.requested_by, generation.command_id, generation.command_correlation or generation.command_id
        )
    image = generation.image if status is GenerationStatus.COMPLETED else None
    error = generation.error if status is GenerationStatus.FAILED else None
    return GenerationFinished(
        requester=origin.requester,
        command_id=origin.command_id,
        correlation_id=origin.correlation_id,
        owner_id=generation.owner_id,
        generation_id=str(generation.id),
        status=status.value,
        image=ImageRef.model_validate(image) if image else None,
        error_code=error["error_code"] if error else None,
        error=error["error"] if error else None,
        retryable=error["retryable"] if error else None,
        finished_at=_final_time(generation),
    )


def became_final(status_before: str, generation: Generation) -> bool:
    """Whether this change is the one that made the generation final (a result after a cancel is not)."""
    return GenerationStatus(status_before) not in TERMINAL_STATUSES and is_terminal(generation)


def _final_time(generation: Generation) -> datetime:
    return generation.finished_at or generation.updated_at


def _fields(fields: Sequence[FieldError]) -> list[RefusedField]:
    return [RefusedField(field=command_field(f.field), reason=f.reason) for f in fields]
