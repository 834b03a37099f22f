"""Pieces every service's lifespan assembles: database, broker with its topology, outbox relay, consumers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.topology import Topology, topology
from services.common.app.settings import (
    BrokerDeliverySettings,
    DatabasePoolSettings,
    load_settings,
)
from services.common.messaging.broker import Publisher, check_topology_on, connect, declare_topology_on
from services.common.messaging.consumer import Consumer
from services.common.messaging.outbox import OutboxRelay
from services.common.observability import telemetry
from services.common.persistence.db import (
    PoolLimits,
    create_all,
    create_engine,
    create_session_factory,
    prepare_sqlite_file,
)
from services.common.persistence.migrations import MigrationSet, check_at_head, migrate_to_head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Database:
    """A service's engine and session factory."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class BrokerRuntime:
    """A service's broker connection, the declared topology, and a confirming publisher."""

    connection: AbstractRobustConnection
    topology: Topology
    publisher: Publisher


@contextlib.asynccontextmanager
async def open_database(
    url: str,
    metadata: MetaData,
    migrations: MigrationSet | None = None,
    *,
    migrate: bool = True,
    pool: DatabasePoolSettings | None = None,
) -> AsyncIterator[Database]:
    """An engine whose tables are ready, disposed on exit; its pool bounded by `pool` (read from DB_POOL_SIZE,
    DB_POOL_MAX_OVERFLOW and DB_POOL_TIMEOUT_SECONDS when not given).

    With `migrations`: upgraded to the head revision when `migrate` (the service's `*_MIGRATE_ON_START`),
    else checked to be at head (DatabaseNotAtHeadError: one line naming the command to run).
    Without: the missing tables of `metadata` are created (create_all), for services not on migrations yet.
    """
    if migrations is not None and migrations.metadata is not metadata:
        raise ValueError(f"the {migrations.service} migrations build other tables than the metadata given")
    prepare_sqlite_file(url)
    limits = pool if pool is not None else load_settings(DatabasePoolSettings)
    engine = create_engine(
        url,
        pool=PoolLimits(limits.db_pool_size, limits.db_pool_max_overflow, limits.db_pool_timeout_seconds),
    )
    telemetry.instrument_database(engine)
    try:
        if migrations is None:
            await create_all(engine, metadata)
        elif migrate:
            change = await migrate_to_head(engine, migrations)
            if change.before != change.after:
                log.info(
                    "%s database upgraded from %s to %s", migrations.service, change.before or "empty", change.after
                )
        else:
            await check_at_head(engine, migrations)
        yield Database(engine, create_session_factory(engine))
    finally:
        await engine.dispose()


def broker_topology(
    prefix: str, delivery: BrokerDeliverySettings | None = None, requesters: tuple[str, ...] = ()
) -> Topology:
    """The deployment's topology: names under `prefix`, retry stages and size limit from `delivery` (read from
    BROKER_RETRY_DELAYS_SECONDS / BROKER_MAX_MESSAGE_BYTES when not given), the queues of the requesting services
    `requesters` (VIXEN_SUBMIT_SERVICES)."""
    rules = delivery if delivery is not None else load_settings(BrokerDeliverySettings)
    return topology(
        prefix,
        retry_delays=rules.broker_retry_delays_seconds,
        max_message_bytes=rules.broker_max_message_bytes,
        requesters=requesters,
    )


@contextlib.asynccontextmanager
async def open_broker(
    url: str,
    prefix: str,
    *,
    service: str,
    delivery: BrokerDeliverySettings | None = None,
    declare: Literal["all", "check"] = "all",
    requesters: tuple[str, ...] = (),
) -> AsyncIterator[BrokerRuntime]:
    """Connect, make sure of the topology, open a publisher.

    `all` declares every exchange and queue with its retry stages and dead-letter queue (idempotent, so start order
    does not matter; it needs configure rights: development, tests). `check` declares nothing and only checks
    passively that the exchanges and `service`'s queues exist (TopologyMissingError, one line, when not): a
    service's own broker user has no configure right, the deploy step (`python -m
    services.common.messaging.broker_declare`)
    declared them. `requesters` (VIXEN_SUBMIT_SERVICES) add the queues of generations requested by event.
    """
    names = broker_topology(prefix, delivery, requesters)
    connection = await connect(url, name=f"vixenbliss-{service}")
    try:
        if declare == "all":
            await declare_topology_on(connection, names)
        else:
            await check_topology_on(connection, names, service=service)
        publisher = await Publisher.open(connection, names.events_exchange)
        try:
            yield BrokerRuntime(connection, names, publisher)
        finally:
            await publisher.close()
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def running_relay(relay: OutboxRelay, *, stop_timeout: float = 15.0) -> AsyncIterator[OutboxRelay]:
    """Run the relay in the background; on exit let it finish its batch, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop), name="outbox-relay")
    task.add_done_callback(_report_crash)
    try:
        yield relay
    finally:
        stop.set()
        relay.notify()
        try:
            await asyncio.wait_for(task, stop_timeout)
        except TimeoutError:
            log.warning("outbox relay did not stop within %.0fs; cancelled", stop_timeout)


@contextlib.asynccontextmanager
async def running_consumers(consumers: Sequence[Consumer]) -> AsyncIterator[None]:
    """Start each consumer; on exit stop them (handlers in flight finish or their messages come back)."""
    started: list[Consumer] = []
    try:
        for consumer in consumers:
            await consumer.start()
            started.append(consumer)
        yield
    finally:
        for consumer in reversed(started):
            await consumer.stop(drain_timeout=10.0)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("outbox relay stopped: %r", task.exception())
