"""Identity's refusals that avatars and LoRA versions share: the one 404 of each, and the 422 of a rejected LoRA."""

from __future__ import annotations

from services.common.http.errors import DomainError, FieldError, NotFoundError

LORA_REJECTED = "LORA_REJECTED"


def avatar_not_found() -> NotFoundError:
    """The one answer for an avatar that does not exist, was deleted, or belongs to someone else."""
    return NotFoundError("unknown avatar")


def lora_not_found() -> NotFoundError:
    """The one answer for a version that does not exist or whose avatar is someone else's or deleted."""
    return NotFoundError("unknown LoRA")


class _LoraRejectedAnswer(DomainError):
    """The HTTP form of a LoraRejectedError (422 LORA_REJECTED); made only by lora_rejected."""

    status_code = 422
    error_code = LORA_REJECTED


def lora_rejected(reason: str, message: str) -> DomainError:
    """The 422 of a refused file: the code in details.reason_code, the sentence in the field `file`."""
    return _LoraRejectedAnswer(f"LoRA rejected: {message}", fields=[FieldError("file", message)], reason_code=reason)
