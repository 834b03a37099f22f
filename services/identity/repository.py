"""Identity queries over an AsyncSession: avatars and LoRA versions (the service decides; this reads and writes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Select, Table, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.http.pagination import Cursor
from services.identity.models import Avatar, LoraModel, LoraStatus, Owner
from services.identity.owner_locks import lock_owner_row
from services.identity.quotas import UploadUsage

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


async def lock_owner(session: AsyncSession, owner_id: str, now: datetime) -> None:
    """Take the owner's lock row until the transaction ends (created on the owner's first write)."""
    await lock_owner_row(session, cast(Table, Owner.__table__), owner_id, {"created_at": now})


async def count_live_avatars(session: AsyncSession, owner_id: str) -> int:
    """How many of the owner's avatars are not deleted."""
    query = select(func.count()).where(Avatar.owner_id == owner_id, Avatar.deleted_at.is_(None))
    return int((await session.execute(query)).scalar_one())


async def upload_usage(session: AsyncSession, owner_id: str, now: datetime) -> UploadUsage:
    """The owner's open registrations (pending, not past their expiry) and the bytes that count: ready versions'
    verified sizes plus open registrations' declared ones. Rejected, expired and retired versions count for nothing."""
    still_open = or_(LoraModel.expires_at.is_(None), LoraModel.expires_at > now)
    pending = select(LoraModel.expires_at, LoraModel.declared_size_bytes).where(
        LoraModel.owner_id == owner_id, LoraModel.status == LoraStatus.PENDING_UPLOAD.value, still_open
    )
    open_rows = (await session.execute(pending)).all()
    ready = select(func.coalesce(func.sum(LoraModel.size_bytes), 0)).where(
        LoraModel.owner_id == owner_id, LoraModel.status == LoraStatus.READY.value
    )
    ready_bytes = int((await session.execute(ready)).scalar_one() or 0)
    expiries = [expires_at for expires_at, _ in open_rows if expires_at is not None]
    return UploadUsage(
        open_uploads=len(open_rows),
        first_open_expiry=min(expiries) if expiries else None,
        lora_bytes=ready_bytes + sum(size or 0 for _, size in open_rows),
    )


async def expire_registrations(session: AsyncSession, now: datetime) -> int:
    """Move every pending registration whose expiry has passed to expired; how many moved.

    Guarded on the status like move_lora: a complete that settles the same version first wins, and this skips it.
    """
    statement = (
        update(LoraModel)
        .where(
            LoraModel.status == LoraStatus.PENDING_UPLOAD.value,
            # Always true of a pending row; stated so that the partial index of due uploads serves this query.
            LoraModel.upload_deleted_at.is_(None),
            LoraModel.expires_at.is_not(None),
            LoraModel.expires_at <= now,
        )
        .values(status=LoraStatus.EXPIRED.value, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return int(result.rowcount or 0)


async def uploads_due(session: AsyncSession, now: datetime, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(id, avatar id) of up to `limit` versions past their registration's expiry whose upload object is still to
    delete: expired, ready, rejected or retired alike (the URL is dead, nothing can write there any more)."""
    query = (
        select(LoraModel.id, LoraModel.avatar_id)
        .where(
            LoraModel.upload_deleted_at.is_(None),
            LoraModel.expires_at.is_not(None),
            LoraModel.expires_at <= now,
            LoraModel.status != LoraStatus.PENDING_UPLOAD.value,
        )
        .order_by(LoraModel.expires_at)
        .limit(limit)
    )
    return [(lora_id, avatar_id) for lora_id, avatar_id in (await session.execute(query)).all()]


async def mark_uploads_deleted(session: AsyncSession, lora_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Record that these versions' upload objects are gone."""
    statement = (
        update(LoraModel)
        .where(LoraModel.id.in_(list(lora_ids)))
        .values(upload_deleted_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(statement)


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
