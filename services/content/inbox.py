"""Inbox: the ids of events a consumer has processed, recorded in the same transaction as the effect."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, MetaData, PrimaryKeyConstraint, String, Table
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.persistence.db import insert_unless_present


def make_inbox_table(metadata: MetaData, name: str = "processed_events") -> Table:
    """The processed-event table of one service, in that service's metadata."""
    return Table(
        name,
        metadata,
        Column("consumer", String(128), nullable=False),
        Column("event_id", String(128), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("consumer", "event_id"),
    )


async def mark_processed(session: AsyncSession, table: Table, event_id: str, consumer: str) -> bool:
    """Record the event as processed by `consumer`; False when it already was (skip the effect then).

    Uses INSERT … ON CONFLICT DO NOTHING, so a duplicate does not abort the caller's transaction.
    """
    values = {"consumer": consumer, "event_id": event_id, "processed_at": datetime.now(UTC)}
    return await insert_unless_present(session, table, values)
