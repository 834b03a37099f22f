"""SQLAlchemy 2 async: engine and session factory from a URL, naming conventions, test databases."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

# Pooled connections older than this are replaced at checkout (no round trip; see create_engine).
POOL_RECYCLE_SECONDS = 300

# Database errors worth waiting out (a restart, a dropped connection, SQLite busy, a pool with no connection free
# in time), for loops that retry.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (DBAPIError, OSError, TimeoutError, PoolTimeoutError)


def pool_exhausted(error: BaseException) -> bool:
    """Whether a request failed because no pooled connection came free within the pool's timeout (too much at
    once): nothing was done, and the same request may be sent again shortly."""
    return isinstance(error, PoolTimeoutError)


def database_unreachable(error: BaseException) -> bool:
    """Whether a request failed because the database could not be reached or its connection was lost (a
    refused connect, a reset, a timeout), not because of what the request asked: an API answers 503 for it."""
    if isinstance(error, OSError | TimeoutError):
        return True
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, OperationalError | InterfaceError)
    return False


# The embedded default: a file next to the service's run directory.
# Deterministic constraint names, so migrations can refer to them (fastapi-best-practices).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


async def insert_unless_present(session: AsyncSession, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING (PostgreSQL, SQLite): True when the row was inserted. A conflict does not
    abort the caller's transaction, unlike catching an IntegrityError would."""
    dialect = session.get_bind().dialect.name
    statement: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        statement = postgresql.insert(table).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).values(values).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"insert_unless_present does not support {dialect}")
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0) == 1)


def make_metadata(schema: str | None = None) -> MetaData:
    """A MetaData with the naming convention; each service's `class Base(DeclarativeBase)` uses one."""
    return MetaData(naming_convention=NAMING_CONVENTION, schema=schema)


@dataclass(frozen=True)
class PoolLimits:
    """How many connections a pool keeps, how many more it may open, and how long a checkout waits for one before
    it fails (sqlalchemy.exc.TimeoutError, which the HTTP handlers answer with a 503 and Retry-After)."""

    size: int
    max_overflow: int
    timeout_seconds: float


def create_engine(url: str | URL, *, echo: bool = False, pool: PoolLimits | None = None, **kwargs: Any) -> AsyncEngine:
    """An async engine: postgresql+asyncpg or sqlite+aiosqlite; `pool` bounds its connection pool (an in-memory
    SQLite database has one connection and no pool to bound)."""
    parsed = make_url(url)
    if pool is not None and parsed.database not in (None, "", ":memory:"):
        kwargs.setdefault("pool_size", pool.size)
        kwargs.setdefault("max_overflow", pool.max_overflow)
        kwargs.setdefault("pool_timeout", pool.timeout_seconds)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, echo=echo, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per checkout (a fifth of them, docs/benchmarks.md). A connection the server
    # closed fails its first statement instead; SQLAlchemy then drops every pooled connection of that age, and the
    # failure is a 503 with Retry-After (HTTP), a redelivery (consumers) or a retry (relays, runner). Connections are
    # replaced after POOL_RECYCLE_SECONDS, before the idle timeouts of proxies and poolers close them.
    kwargs.setdefault("pool_recycle", POOL_RECYCLE_SECONDS)
    return create_async_engine(parsed, echo=echo, **kwargs)


@asynccontextmanager
async def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reads only: its statements run in autocommit, without the BEGIN and ROLLBACK round trips of
    a transaction (each statement sees its own snapshot; use a transaction where several reads must agree)."""
    async with sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets readers run beside the one writer. NORMAL: no fsync per
    # commit; a commit survives a killed process, not a power loss (docs/dev/service-conventions.md).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no lazy reload in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_all(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create the tables of `metadata` that do not exist yet (dev, demo and tests; not a migration tool)."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


async def drop_all(engine: AsyncEngine, metadata: MetaData) -> None:
    """Drop the tables of `metadata`."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)


async def create_test_database(admin_url: str | URL, prefix: str = "vb_test_") -> URL:
    """Create a uniquely named PostgreSQL database; return its URL (same server and credentials)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefix):
        raise ValueError(f"database name prefix must be lowercase letters, digits and _: {prefix!r}")
    admin = make_url(admin_url)
    name = f"{prefix}{secrets.token_hex(6)}"
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        await engine.dispose()
    return admin.set(database=name)


async def drop_test_database(admin_url: str | URL, database_url: str | URL) -> None:
    """Drop a database made by create_test_database, closing what still holds it."""
    name = make_url(database_url).database
    if not name:
        raise ValueError("database URL names no database")
    engine = create_async_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await engine.dispose()


def prepare_sqlite_file(url: str) -> None:
    """Create the folder of a SQLite database file (the embedded default lives under .run/)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
