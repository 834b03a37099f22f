"""Where the platform keeps each object: keys derived from ids and hashes the receiver trusts, never from a message.

A message names data (a generation id, a LoRA's sha256); the key is computed here, by the writer and the reader
alike, so a forged event cannot point a service at another tenant's object (DESIGN.md § Trust rules).
"""

from __future__ import annotations

import re
import uuid

GENERATION_IMAGE_PREFIX = "generations/"
LORA_PREFIX = "loras/sha256/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UnderivableKeyError(ValueError):
    """The id or hash given cannot name an object of the platform (not a canonical UUID, not a sha256)."""


def canonical_generation_id(generation_id: str) -> str:
    """The generation id as content issues it (a UUID, lowercase with hyphens); UnderivableKeyError otherwise."""
    try:
        parsed = uuid.UUID(generation_id)
    except (ValueError, TypeError, AttributeError):
        raise UnderivableKeyError(f"generation id {str(generation_id)[:64]!r} is not a UUID") from None
    if str(parsed) != generation_id:
        raise UnderivableKeyError(f"generation id {generation_id[:64]!r} is not in canonical UUID form")
    return generation_id


def generation_image_key(generation_id: str | uuid.UUID) -> str:
    """The PNG of a generation: `generations/<uuid>.png`, so a repeat overwrites the same object."""
    text = str(generation_id) if isinstance(generation_id, uuid.UUID) else canonical_generation_id(generation_id)
    return f"{GENERATION_IMAGE_PREFIX}{text}.png"


def lora_object_key(sha256: str) -> str:
    """A ready LoRA: immutable and content-addressed, `loras/sha256/<sha256>.safetensors` (no upload URL points
    there)."""
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise UnderivableKeyError("a LoRA's sha256 must be 64 lowercase hex digits")
    return f"{LORA_PREFIX}{sha256}.safetensors"


def lora_key_problem(object_key: str, sha256: str) -> str | None:
    """Why `object_key` is not where the LoRA of this sha256 lives, or None when it is."""
    try:
        expected = lora_object_key(sha256)
    except UnderivableKeyError as error:
        return str(error)
    if object_key != expected:
        return f"LoRA object key {object_key[:120]!r} is not the content address of its sha256 ({expected})"
    return None


def image_key_problem(object_key: str, generation_id: str | uuid.UUID) -> str | None:
    """Why `object_key` is not where the image of this generation lives, or None when it is."""
    try:
        expected = generation_image_key(generation_id)
    except UnderivableKeyError as error:
        return str(error)
    if object_key != expected:
        return f"image object key {object_key[:120]!r} is not the generation's own ({expected})"
    return None
