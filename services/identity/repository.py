"""Identity queries over an AsyncSession: avatars and LoRA models (the service decides, this only reads and writes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.models import Avatar, LoraModel, LoraStatus


async def get_avatar(session: AsyncSession, avatar_id: uuid.UUID) -> Avatar | None:
    """The avatar, or None."""
    return await session.get(Avatar, avatar_id, populate_existing=True)


async def get_lora(session: AsyncSession, lora_id: uuid.UUID) -> LoraModel | None:
    """The LoRA model, or None."""
    return await session.get(LoraModel, lora_id, populate_existing=True)


async def mark_lora_ready(
    session: AsyncSession, lora_id: uuid.UUID, *, sha256: str, size_bytes: int, now: datetime
) -> bool:
    """Move a pending LoRA to ready; False when it was not pending (another call completed it first).

    A guarded UPDATE rather than read-then-write, so two concurrent completes cannot both win.
    """
    statement = (
        update(LoraModel)
        .where(LoraModel.id == lora_id, LoraModel.status == LoraStatus.PENDING_UPLOAD.value)
        .values(status=LoraStatus.READY.value, sha256=sha256, size_bytes=size_bytes, ready_at=now)
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount == 1


async def set_active_lora(session: AsyncSession, avatar_id: uuid.UUID, lora_id: uuid.UUID, now: datetime) -> None:
    """Point the avatar at a LoRA."""
    statement = (
        update(Avatar)
        .where(Avatar.id == avatar_id)
        .values(active_lora_id=lora_id, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(statement)
