"""Identity queries over an AsyncSession: avatars and LoRA versions (the service decides; this reads and writes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Select, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.pagination import Cursor
from services.identity.models import Avatar, LoraModel, LoraStatus

Row = TypeVar("Row", Avatar, LoraModel)


async def get_owned_avatar(
    session: AsyncSession, owner_id: str, avatar_id: uuid.UUID, *, for_update: bool = False
) -> Avatar | None:
    """The owner's avatar unless it was deleted; None otherwise (someone else's avatar does not exist for them)."""
    query = select(Avatar).where(Avatar.id == avatar_id, Avatar.owner_id == owner_id, Avatar.deleted_at.is_(None))
    return await _one(session, query, for_update)


async def get_live_avatar(session: AsyncSession, avatar_id: uuid.UUID, *, for_update: bool = False) -> Avatar | None:
    """Any owner's avatar unless it was deleted (admin routes)."""
    return await _one(session, select(Avatar).where(Avatar.id == avatar_id, Avatar.deleted_at.is_(None)), for_update)


async def get_owned_lora(
    session: AsyncSession, owner_id: str, lora_id: uuid.UUID, *, for_update: bool = False
) -> LoraModel | None:
    """The owner's LoRA version, unless its avatar was deleted."""
    query = (
        select(LoraModel)
        .join(Avatar, Avatar.id == LoraModel.avatar_id)
        .where(LoraModel.id == lora_id, LoraModel.owner_id == owner_id, Avatar.deleted_at.is_(None))
    )
    if for_update:
        # Lock the LoRA row only: the avatar row is locked, when needed, by the use case itself.
        query = query.with_for_update(of=LoraModel)
    return await _one(session, query, False)


async def get_lora(session: AsyncSession, lora_id: uuid.UUID) -> LoraModel | None:
    """A LoRA version by id, whoever owns it."""
    return await _one(session, select(LoraModel).where(LoraModel.id == lora_id), False)


async def list_owned_avatars(session: AsyncSession, owner_id: str, cursor: Cursor | None, limit: int) -> list[Avatar]:
    """Up to `limit` + 1 of the owner's live avatars after `cursor`, newest first (the extra row says more exist)."""
    query = select(Avatar).where(Avatar.owner_id == owner_id, Avatar.deleted_at.is_(None))
    return list((await session.execute(_keyset(query, Avatar, cursor, limit))).scalars())


async def list_avatar_loras(
    session: AsyncSession, avatar_id: uuid.UUID, cursor: Cursor | None, limit: int
) -> list[LoraModel]:
    """Up to `limit` + 1 of the avatar's LoRA versions after `cursor`, newest first."""
    query = select(LoraModel).where(LoraModel.avatar_id == avatar_id)
    return list((await session.execute(_keyset(query, LoraModel, cursor, limit))).scalars())


async def loras_with_status(
    session: AsyncSession, avatar_id: uuid.UUID, statuses: Sequence[LoraStatus]
) -> list[LoraModel]:
    """The avatar's LoRA versions in any of `statuses`, locked for the transaction."""
    query = (
        select(LoraModel)
        .where(LoraModel.avatar_id == avatar_id, LoraModel.status.in_([s.value for s in statuses]))
        .order_by(LoraModel.created_at)
        .with_for_update()
    )
    return list((await session.execute(query)).scalars())


async def move_lora(
    session: AsyncSession, lora_id: uuid.UUID, source: LoraStatus, target: LoraStatus, **values: Any
) -> bool:
    """Move a LoRA from `source` to `target` (with `values`); False when it was no longer in `source`.

    A guarded UPDATE rather than read-then-write, so two concurrent completes (or a complete and a retire)
    cannot both win.
    """
    statement = (
        update(LoraModel)
        .where(LoraModel.id == lora_id, LoraModel.status == source.value)
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount == 1


def _keyset(
    query: Select[Any], model: type[Avatar] | type[LoraModel], cursor: Cursor | None, limit: int
) -> Select[Any]:
    if cursor is not None:
        query = query.where(
            or_(
                model.created_at < cursor.created_at,
                and_(model.created_at == cursor.created_at, model.id < cursor.id),
            )
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


async def _one(session: AsyncSession, query: Select[Row], for_update: bool) -> Row | None:
    query = query.execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()
