"""The identity events that make an avatar ready to generate: created, its LoRA ready, then updated to use it."""

from datetime import datetime, timedelta

from contracts.events import AvatarCreated, AvatarUpdated, EventPayload, LoraReady
from contracts.object_keys import lora_object_key


def ready_avatar_events(
    avatar_id: str,
    lora_id: str,
    *,
    time: datetime,
    step: timedelta,
    scale: float = 1.0,
    sha256: str = "ab" * 32,
    size_bytes: int = 1000,
    owner_id: str = "o1",
    name: str = "Vixen",
) -> list[tuple[EventPayload, datetime]]:
    """(payload, event time) in identity's order; the LoRA and the update come `step` after the creation."""
    ready = LoraReady(
        lora_model_id=lora_id,
        avatar_id=avatar_id,
        owner_id=owner_id,
        object_key=lora_object_key(sha256),
        sha256=sha256,
        size_bytes=size_bytes,
        base_model="sdxl-base-1.0",
        default_scale=scale,
    )
    updated = AvatarUpdated(avatar_id=avatar_id, owner_id=owner_id, name=name, active_lora_model_id=lora_id)
    return [
        (AvatarCreated(avatar_id=avatar_id, owner_id=owner_id, name=name), time),
        (ready, time + step),
        (updated, time + step),
    ]
