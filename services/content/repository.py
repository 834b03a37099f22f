"""Content queries over an AsyncSession: projection rows, generations, idempotency keys, owner quotas."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.http.pagination import Cursor
from services.common.persistence.db import insert_unless_present
from services.content.models import (
    AvatarProjection,
    Generation,
    GenerationStatus,
    IdempotencyKey,
    LoraProjection,
    OwnerQuota,
)

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


async def list_avatars(
    session: AsyncSession, owner_id: str, *, limit: int, after: Cursor | None
) -> list[AvatarProjection]:
    """Up to `limit` of the owner's avatars that are not deleted, newest first, after the cursor's row (keyset:
    created_at, id)."""
    query = select(AvatarProjection).where(AvatarProjection.owner_id == owner_id, AvatarProjection.deleted.is_(False))
    if after is not None:
        query = query.where(
            or_(
                AvatarProjection.created_at < after.created_at,
                (AvatarProjection.created_at == after.created_at) & (AvatarProjection.id < str(after.id)),
            )
        )
    query = query.order_by(AvatarProjection.created_at.desc(), AvatarProjection.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def get_loras(session: AsyncSession, lora_ids: Sequence[str]) -> dict[str, LoraProjection]:
    """The projected LoRAs among `lora_ids`, by id."""
    if not lora_ids:
        return {}
    query = select(LoraProjection).where(LoraProjection.id.in_(lora_ids))
    return {lora.id: lora for lora in (await session.execute(query)).scalars()}


async def get_generation(
    session: AsyncSession, generation_id: uuid.UUID, *, for_update: bool = False
) -> Generation | None:
    """The generation, or None; locked with for_update, so concurrent result events apply one at a time."""
    query = select(Generation).where(Generation.id == generation_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def list_generations(
    session: AsyncSession,
    owner_id: str,
    *,
    limit: int,
    after: Cursor | None,
    avatar_id: str | None = None,
    statuses: Sequence[str] = (),
) -> list[Generation]:
    """Up to `limit` of the owner's generations, newest first, after the cursor's row (keyset: created_at, id)."""
    query = select(Generation).where(Generation.owner_id == owner_id)
    if avatar_id is not None:
        query = query.where(Generation.avatar_id == avatar_id)
    if statuses:
        query = query.where(Generation.status.in_(statuses))
    if after is not None:
        query = query.where(
            or_(
                Generation.created_at < after.created_at,
                (Generation.created_at == after.created_at) & (Generation.id < after.id),
            )
        )
    query = query.order_by(Generation.created_at.desc(), Generation.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def count_in_flight(session: AsyncSession, owner_id: str) -> int:
    """How many of the owner's generations are queued or running."""
    query = select(func.count()).where(Generation.owner_id == owner_id, Generation.status.in_(OPEN_STATUSES))
    return int((await session.execute(query)).scalar_one())


async def lock_owner_quota(session: AsyncSession, owner_id: str, *, full_bucket: float, now: datetime) -> OwnerQuota:
    """The owner's quota row, created with a full bucket if missing, locked until the transaction ends.

    The insert comes first on purpose: it makes the transaction a writer at once (SQLite then queues concurrent
    submits on its write lock instead of failing one at commit), and on PostgreSQL the row lock that follows
    makes two replicas' submits for one owner take turns.
    """
    await insert_unless_present(
        session, OwnerQuota.__table__, {"owner_id": owner_id, "tokens": full_bucket, "refilled_at": now}
    )
    query = (
        select(OwnerQuota)
        .where(OwnerQuota.owner_id == owner_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one()


async def get_idempotency_key(session: AsyncSession, owner_id: str, key: str) -> IdempotencyKey | None:
    """The owner's record of an Idempotency-Key, or None."""
    query = (
        select(IdempotencyKey)
        .where(IdempotencyKey.owner_id == owner_id, IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def delete_idempotency_keys_before(session: AsyncSession, before: datetime) -> int:
    """Forget Idempotency-Keys recorded before `before`; how many were."""
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


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


async def images_to_purge(session: AsyncSession, limit: int) -> list[Generation]:
    """Canceled generations whose late image is still in storage, locked (others' rows skipped)."""
    query = (
        select(Generation)
        .where(Generation.image_purge_pending.is_(True))
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(query)).scalars())
