"""Content queries over an AsyncSession: projection rows and generations (the service decides)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.content.models import AvatarProjection, Generation, LoraProjection


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
