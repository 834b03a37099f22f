"""A per-owner lock row: what makes a per-owner quota hold when one owner's requests race, on one replica or many."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.persistence.db import insert_unless_present


async def lock_owner_row(session: AsyncSession, table: Table, owner_id: str, values: dict[str, Any]) -> None:
    """Take the owner's row of `table` (keyed by `owner_id`, created with `values` if missing) for the rest of the
    transaction: whatever the transaction counts and adds afterwards, no other transaction of that owner does at the
    same time.

    The insert comes first on purpose: it makes the transaction a writer at once (SQLite then queues concurrent
    transactions on its write lock instead of failing one at commit), and on PostgreSQL the row lock that follows
    makes two replicas' requests for one owner take turns (a conflicting insert waits for the first to commit).
    """
    await insert_unless_present(session, table, {**values, "owner_id": owner_id})
    await session.execute(select(table.c.owner_id).where(table.c.owner_id == owner_id).with_for_update())
