"""Per-owner quotas of identity (avatars, open upload registrations, LoRA bytes): the rules, no I/O.

An owner's usage is counted from the rows themselves, in the transaction that would add to it, after the owner's
lock row was taken (repository.lock_owner): two requests of one owner, on one replica or two, take turns, so a
quota holds under any concurrency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common.http.errors import ConflictError, FieldError, TooManyRequestsError

GIB = 1024 * 1024 * 1024

DEFAULT_MAX_AVATARS = 100
DEFAULT_MAX_OPEN_UPLOADS = 5
DEFAULT_MAX_LORA_BYTES = 10 * GIB
# An hour: four times the upload URL's default life, so a large PUT begun just before the URL expires can still end
# and be completed.
DEFAULT_REGISTRATION_TTL_SECONDS = 3600

# details.reason_code of each refusal (docs/identity.md, "Quotas").
TOO_MANY_AVATARS = "TOO_MANY_AVATARS"
TOO_MANY_OPEN_UPLOADS = "TOO_MANY_OPEN_UPLOADS"
LORA_BYTES_QUOTA_EXCEEDED = "LORA_BYTES_QUOTA_EXCEEDED"
REGISTRATION_EXPIRED = "REGISTRATION_EXPIRED"


@dataclass(frozen=True)
class OwnerQuotas:
    """IDENTITY_MAX_AVATARS_PER_OWNER, IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER and IDENTITY_MAX_LORA_BYTES_PER_OWNER."""

    max_avatars: int = DEFAULT_MAX_AVATARS
    max_open_uploads: int = DEFAULT_MAX_OPEN_UPLOADS
    max_lora_bytes: int = DEFAULT_MAX_LORA_BYTES


DEFAULT_QUOTAS = OwnerQuotas()


@dataclass(frozen=True)
class UploadUsage:
    """What an owner's LoRA versions hold now: open registrations (and when the first of them expires), and the bytes
    that count (ready versions' verified sizes plus open registrations' declared ones)."""

    open_uploads: int
    first_open_expiry: datetime | None
    lora_bytes: int


def registration_expiry(now: datetime, ttl_seconds: int) -> datetime:
    """When a registration made now stops being open (its upload URL has expired well before)."""
    return now + timedelta(seconds=ttl_seconds)


def is_open(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a pending registration may still be uploaded to and completed (no expiry: registered before expiry
    existed and not yet given one, so still open)."""
    return expires_at is None or now < expires_at


def check_avatar_quota(live_avatars: int, quotas: OwnerQuotas) -> None:
    """Refuse a new avatar when the owner already has the most live ones it may (409: only a delete frees one)."""
    if live_avatars < quotas.max_avatars:
        return
    raise ConflictError(
        f"{live_avatars} avatars exist; at most {quotas.max_avatars} may: delete one first",
        reason_code=TOO_MANY_AVATARS,
    )


def check_registration(usage: UploadUsage, size_bytes: int, quotas: OwnerQuotas, now: datetime) -> None:
    """Refuse a new registration past the open-upload quota (429, Retry-After: when the first open one expires) or
    past the byte quota (409: completing does not free bytes, retiring a version or letting a registration expire
    does)."""
    if usage.open_uploads >= quotas.max_open_uploads:
        raise TooManyRequestsError(
            f"{usage.open_uploads} LoRA uploads are open; at most {quotas.max_open_uploads} may be: complete one "
            "or wait until one expires",
            reason_code=TOO_MANY_OPEN_UPLOADS,
            retry_after_seconds=seconds_until(usage.first_open_expiry, now),
        )
    if usage.lora_bytes + size_bytes > quotas.max_lora_bytes:
        left = max(0, quotas.max_lora_bytes - usage.lora_bytes)
        reason = (
            f"{size_bytes} bytes do not fit: {usage.lora_bytes} of the owner's {quotas.max_lora_bytes} bytes are "
            f"taken by ready versions and open registrations, {left} are left"
        )
        raise ConflictError(
            f"LoRA storage quota exceeded: {reason}",
            fields=[FieldError("size_bytes", reason)],
            reason_code=LORA_BYTES_QUOTA_EXCEEDED,
        )


def check_still_open(expires_at: datetime | None, now: datetime) -> None:
    """Refuse to complete a registration whose time is up (409): its upload object is the retention loop's to delete."""
    if is_open(expires_at, now):
        return
    raise registration_expired()


def registration_expired() -> ConflictError:
    """The 409 of a registration that expired before it was completed."""
    return ConflictError(
        "the LoRA registration expired before it was completed: register the file again",
        reason_code=REGISTRATION_EXPIRED,
    )


def seconds_until(moment: datetime | None, now: datetime) -> int:
    """Whole seconds from now until `moment`, at least 1 (a Retry-After)."""
    if moment is None:
        return 1
    return max(1, math.ceil((moment - now).total_seconds()))
