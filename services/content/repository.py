"""Content queries over an AsyncSession: projection rows and generations (the service decides)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.content.models import AvatarProjection, Generation, GenerationStatus, LoraProjection

OPEN_STATUSES = (GenerationStatus.QUEUED.value, GenerationStatus.RUNNING.value)


async def get_avatar(session: AsyncSession, avatar_id: str, *, for_update: bool = False) -> AvatarProjection | None:
    """The projected avatar, or None; locked for the transaction with for_update (PostgreSQL)."""
    query = select(AvatarProjection).where(AvatarProjection.id == avatar_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def get_lora(session: AsyncSession, lora_id: str, *, for_update: bool = False) -> LoraProjection | None:
    """The projected LoRA, or None."""
    query = select(LoraProjection).where(LoraProjection.id == lora_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def get_generation(
    session: AsyncSession, generation_id: uuid.UUID, *, for_update: bool = False
) -> Generation | None:
    """The generation, or None; locked with for_update, so concurrent result events apply one at a time."""
    query = select(Generation).where(Generation.id == generation_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def overdue_generations(session: AsyncSession, deadline_before: datetime, limit: int) -> list[Generation]:
    """Open generations whose deadline passed before `deadline_before`, locked; rows another sweeper holds
    are skipped (PostgreSQL), so several content replicas can sweep at once."""
    query = (
        select(Generation)
        .where(Generation.status.in_(OPEN_STATUSES), Generation.deadline < deadline_before)
        .order_by(Generation.deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(query)).scalars())
