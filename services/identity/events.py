"""The events identity publishes, built from its rows: avatar.* and lora.*."""

from __future__ import annotations

from contracts.envelope import EventEnvelope
from contracts.events import AvatarEvent, LoraEvent
from contracts.topology import SERVICE_IDENTITY, event_source
from services.common.messaging.events import new_event
from services.identity.models import Avatar, LoraModel

SOURCE = event_source(SERVICE_IDENTITY)


def avatar_event(payload_type: type[AvatarEvent], avatar: Avatar, correlation_id: str) -> EventEnvelope:
    """An avatar.* event carrying the avatar as it now is."""
    payload = payload_type(
        avatar_id=str(avatar.id),
        owner_id=avatar.owner_id,
        name=avatar.name,
        active_lora_model_id=str(avatar.active_lora_id) if avatar.active_lora_id else None,
    )
    return new_event(payload, source=SOURCE, subject=str(avatar.id), correlation_id=correlation_id)


def lora_event(payload_type: type[LoraEvent], lora: LoraModel) -> EventEnvelope:
    """A lora.ready or lora.retired event of a verified version (its immutable key and sha256)."""
    if lora.sha256 is None or lora.size_bytes is None or lora.object_key is None:
        raise ValueError("a LoRA is announced only once it was verified and stored")
    payload = payload_type(
        lora_model_id=str(lora.id),
        avatar_id=str(lora.avatar_id),
        owner_id=lora.owner_id,
        object_key=lora.object_key,
        sha256=lora.sha256,
        size_bytes=lora.size_bytes,
        base_model=lora.base_model,
        default_scale=lora.default_scale,
        trigger_words=list(lora.trigger_words),
    )
    return new_event(payload, source=SOURCE, subject=str(lora.id), correlation_id=str(lora.id))
