"""Transactional outbox: events written with the business change, published later by a relay."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime
from typing import Any, Protocol

import aio_pika
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from services.common.app.periodic import pause
from services.common.messaging.events import EncodedEvent, encode_event
from services.common.observability import telemetry

log = logging.getLogger(__name__)


class ConfirmingPublisher(Protocol):
    """What the relay needs from a publisher (services.common.messaging.broker.Publisher fits)."""

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None: ...


def make_outbox_table(metadata: MetaData, name: str = "outbox") -> Table:
    """The outbox table of one service, in that service's metadata."""
    # SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
    id_type = BigInteger().with_variant(Integer(), "sqlite")
    table = Table(
        name,
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("event_id", String(128), nullable=False, unique=True),
        Column("routing_key", String(255), nullable=False),
        Column("content_type", String(255), nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("headers", JSON, nullable=False, default=dict),
        Column("traceparent", String(128), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("sent_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        Column("last_error", Text, nullable=True),
    )
    # The relay scans only unsent rows, oldest first: a partial index keeps that cheap as rows pile up.
    Index(
        f"ix_{name}_unsent",
        table.c.id,
        postgresql_where=table.c.sent_at.is_(None),
        sqlite_where=table.c.sent_at.is_(None),
    )
    return table


async def add_to_outbox(
    session: AsyncSession,
    table: Table,
    event: EventEnvelope,
    *,
    traceparent: str | None = None,
    routing_key: str | None = None,
) -> None:
    """Stage an event in the caller's transaction: it is published only if that transaction commits, under
    `routing_key` (default: its type). The trace context kept with it is `traceparent`, else the current span's
    (with its tracestate), restored by the relay."""
    context = {telemetry.TRACEPARENT: traceparent} if traceparent else telemetry.current_trace_headers()
    traceparent = context.get(telemetry.TRACEPARENT)
    encoded = encode_event(event, traceparent=traceparent, routing_key=routing_key)
    if telemetry.TRACESTATE in context:
        encoded.headers[telemetry.TRACESTATE] = context[telemetry.TRACESTATE]
    await session.execute(
        insert(table).values(
            event_id=encoded.event_id,
            routing_key=encoded.routing_key,
            content_type=encoded.content_type,
            body=encoded.body,
            headers=encoded.headers,
            traceparent=traceparent,
            created_at=datetime.now(UTC),
            attempts=0,
        )
    )


class OutboxRelay:
    """Publishes unsent outbox rows with confirms, in id order, and marks them sent.

    Several relays may run against one PostgreSQL database: rows are locked FOR UPDATE SKIP LOCKED,
    so each row is published by one relay. On SQLite (one process) rows are read without locks.
    A crash between the confirm and the commit republishes a row: consumers are idempotent.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        table: Table,
        publisher: ConfirmingPublisher,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._sessions = session_factory
        self._table = table
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        # When the oldest row still unsent was staged, as of the last pass (None: none was left).
        self._oldest_unsent: datetime | None = None

    def notify(self) -> None:
        """Wake the loop now (call after committing an outbox row, for low latency)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Publish one batch; return how many rows were sent. Raises when a publish failed.

        The batch's publishes go out in id order (the channel's lock is first come, first served) without waiting
        for each confirm; the confirms are awaited together and the confirmed rows marked sent in one statement.
        Only the rows before the first failure count as sent: the rest are published again on the next pass (a
        duplicate when their confirm had come, which consumers drop), so a failure never lets a later event
        overtake an earlier one for good.
        """
        table = self._table
        failure: Exception | None = None
        failed_at: datetime | None = None
        async with self._sessions() as session, session.begin():
            query = select(table).where(table.c.sent_at.is_(None)).order_by(table.c.id).limit(self._batch_size)
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await session.execute(query)).mappings().all()
            outcomes = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            confirmed: list[int] = []
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    failure, failed_at = outcome, row["created_at"]
                    await session.execute(
                        update(table)
                        .where(table.c.id == row["id"])
                        .values(
                            attempts=table.c.attempts + 1,
                            last_error=f"{type(outcome).__name__}: {outcome}"[:2000],
                        )
                    )
                    break
                if isinstance(outcome, BaseException):
                    raise outcome  # cancelled or stopping: nothing of this batch is marked
                confirmed.append(row["id"])
            if confirmed:
                await session.execute(
                    update(table)
                    .where(table.c.id.in_(confirmed))
                    .values(sent_at=datetime.now(UTC), attempts=table.c.attempts + 1, last_error=None)
                )
        sent = len(confirmed)
        # The lag is read off the batch: the failed row is the oldest left, a short batch left none; only a full
        # one (a backlog) needs a look at what is still waiting.
        if failure is not None:
            self._oldest_unsent = _utc(failed_at)
        elif len(rows) < self._batch_size:
            self._oldest_unsent = None
        else:
            await self._note_oldest_unsent()
        if failure is not None:
            raise failure
        return sent

    def lag_seconds(self) -> float:
        """How long the oldest unsent row has waited, as of the last pass (0 when none was left): the metric
        that says the relay (or the broker) is behind."""
        if self._oldest_unsent is None:
            return 0.0
        return max((datetime.now(UTC) - self._oldest_unsent).total_seconds(), 0.0)

    async def _note_oldest_unsent(self) -> None:
        table = self._table
        query = select(table.c.created_at).where(table.c.sent_at.is_(None)).order_by(table.c.id).limit(1)
        async with self._sessions() as session:
            oldest = (await session.execute(query)).scalar_one_or_none()
        self._oldest_unsent = _utc(oldest)

    async def _publish(self, row: Any) -> None:
        message = _message(row)
        # A publish span, the child of the context the row was staged in; the message carries the span's context.
        with telemetry.producer_span(row["routing_key"], message.headers) as trace_headers:
            message.headers.update(trace_headers)
            await self._publisher.publish_confirmed(message, row["routing_key"])

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: drain, then wait for notify() or the poll interval; back off on errors."""
        failures = 0
        while not stop.is_set():
            try:
                sent = await self.run_once()
                failures = 0
            except Exception as error:
                failures += 1
                delay = min(self._max_backoff, self._poll_interval * 2**failures) * random.uniform(0.5, 1.0)
                log.warning("outbox relay: publish failed (%s); retrying in %.1fs", error, delay)
                await pause(stop, delay)
                continue
            if sent >= self._batch_size:
                continue  # more may be waiting
            await pause(stop, self._poll_interval, self._wake)
            self._wake.clear()


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite returns the stored wall time without its offset; rows are staged in UTC.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _message(row: Any) -> aio_pika.Message:
    return EncodedEvent(
        event_id=row["event_id"],
        routing_key=row["routing_key"],
        body=row["body"],
        content_type=row["content_type"],
        headers=dict(row["headers"] or {}),
    ).to_message()
