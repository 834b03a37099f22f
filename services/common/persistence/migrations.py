"""Alembic migrations of each service: upgrade at start or by command, the at-head check, new revisions."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import re
import sys
import tempfile
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator

from services.common.persistence.db import create_engine, prepare_sqlite_file

MigrationAction = Literal["upgrade", "downgrade"]

_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")


@dataclass(frozen=True)
class MigrationSet:
    """One service's migrations: the package of its scripts, the tables they build, its own version table.

    Every table of `metadata` is named `<service>_*`: services pointed at one database never share a table,
    and autogenerate and the checks look only at this service's tables (and version table).
    """

    service: str
    # A package holding env.py, script.py.mako and versions/ (e.g. "services.content.migrations").
    package: str
    metadata: MetaData

    def __post_init__(self) -> None:
        if not _SERVICE_NAME.fullmatch(self.service):
            raise ValueError(f"service name must be lowercase letters, digits and _: {self.service!r}")
        strays = sorted(t.name for t in self.metadata.tables.values() if not t.name.startswith(self.table_prefix))
        if strays:
            raise ValueError(f"tables of {self.service} must be named {self.table_prefix}*: {', '.join(strays)}")

    @property
    def table_prefix(self) -> str:
        """What every table of the service starts with."""
        return f"{self.service}_"

    @property
    def version_table(self) -> str:
        """Alembic's version table of this service (one per service, so services can share a database)."""
        return f"{self.service}_alembic_version"

    @property
    def migrate_command(self) -> str:
        """The command an operator runs to upgrade the database."""
        return f"python -m {self.package.rpartition('.')[0]} migrate"

    @property
    def migrate_setting(self) -> str:
        """The variable that turns the upgrade at start on or off."""
        return f"{self.service.upper()}_MIGRATE_ON_START"

    def config(self, connection: Connection | None = None) -> Config:
        """An Alembic config without an ini file; env.py finds this set and the connection in its attributes."""
        parent, _, leaf = self.package.rpartition(".")
        config = Config()
        # "package:folder" is resolved with importlib.resources: works from a checkout and from a wheel.
        config.set_main_option("script_location", f"{parent}:{leaf}")
        config.set_main_option("path_separator", "os")
        config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
        config.attributes["migration_set"] = self
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def include_name(self, name: str | None, type_: str, parent_names: MutableMapping[Any, Any]) -> bool:
        """Alembic's include_name hook: of the database's tables, only this service's are compared."""
        return type_ != "table" or (name or "").startswith(self.table_prefix)


@dataclass(frozen=True)
class RevisionChange:
    """The service's revision before and after an upgrade or downgrade (None: no revision, empty)."""

    before: str | None
    after: str | None


class DatabaseNotAtHeadError(RuntimeError):
    """The database is not at the head revision and the service was told not to upgrade it."""


def run_migrations_in_env() -> None:
    """The body of every service's env.py: run Alembic on the connection the caller handed over."""
    from alembic import context

    migrations = context.config.attributes.get("migration_set")
    connection = context.config.attributes.get("connection")
    if not isinstance(migrations, MigrationSet) or not isinstance(connection, Connection):
        raise CommandError(
            "run migrations with `python -m services.<service> migrate` "
            "or `python -m services.common.persistence.migrations revision`, not the alembic command"
        )
    context.configure(
        connection=connection,
        target_metadata=migrations.metadata,
        version_table=migrations.version_table,
        include_name=migrations.include_name,
        compare_type=True,
        # SQLite cannot alter most things in place: batch operations copy the table there, and run
        # plain ALTERs on PostgreSQL.
        render_as_batch=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Our TypeDecorators (UtcDateTime) are written as their SQLAlchemy type, so that a migration never
    # imports service code that may change after it was written.
    if kind == "type" and isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        if type(impl).__module__.startswith("sqlalchemy.sql"):
            return f"sa.{impl!r}"
    return False


def head_revision(migrations: MigrationSet) -> str | None:
    """The head revision of the service's scripts (raises when there are several heads: merge them)."""
    return ScriptDirectory.from_config(migrations.config()).get_current_head()


def current_revision(connection: Connection, migrations: MigrationSet) -> str | None:
    """The revision the database is at for this service; None when it has none (never migrated)."""
    context = MigrationContext.configure(connection, opts={"version_table": migrations.version_table})
    return context.get_current_revision()


def schema_differences(connection: Connection, migrations: MigrationSet) -> list[Any]:
    """What autogenerate would change to make the database match the service's models (empty: none)."""
    context = MigrationContext.configure(
        connection,
        opts={"version_table": migrations.version_table, "include_name": migrations.include_name, "compare_type": True},
    )
    return list(compare_metadata(context, migrations.metadata))


def advisory_lock_key(service: str) -> int:
    """A signed 64-bit key, stable across processes and releases (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"vixenbliss.migrations.{service}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def migrate_to_head(engine: AsyncEngine, migrations: MigrationSet) -> RevisionChange:
    """Upgrade the service's tables to the head revision, in one transaction on PostgreSQL."""
    return await _run_locked(engine, migrations, "upgrade", "head")


async def downgrade(engine: AsyncEngine, migrations: MigrationSet, revision: str = "base") -> RevisionChange:
    """Downgrade the service's tables to `revision` ("base": none of them left)."""
    return await _run_locked(engine, migrations, "downgrade", revision)


async def check_at_head(engine: AsyncEngine, migrations: MigrationSet) -> str | None:
    """The database's revision when it is the head; raises DatabaseNotAtHeadError (one line) otherwise."""
    async with engine.connect() as connection:
        current = await connection.run_sync(current_revision, migrations)
    head = head_revision(migrations)
    if current != head:
        raise DatabaseNotAtHeadError(
            f"the {migrations.service} database is at revision {current or 'none (empty)'}, not at head {head}: "
            f"run `{migrations.migrate_command}` first (or set {migrations.migrate_setting}=true)"
        )
    return current


# Alembic's `op` and migration context are process-wide: two migrations interleaving in one event loop (two
# services' sets, say) would write through each other's context. One at a time per loop.
_IN_PROCESS_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _in_process_lock() -> asyncio.Lock:
    return _IN_PROCESS_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())


async def _run_locked(
    engine: AsyncEngine, migrations: MigrationSet, action: MigrationAction, revision: str
) -> RevisionChange:
    async with _in_process_lock(), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting at once queue here; released at commit. The next one then finds the head
            # already reached (its statements see the committed version table) and does nothing.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock_key(migrations.service)}
            )
        return await connection.run_sync(_run_command, migrations, action, revision)


def _run_command(
    connection: Connection, migrations: MigrationSet, action: MigrationAction, revision: str
) -> RevisionChange:
    before = current_revision(connection, migrations)
    config = migrations.config(connection)
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)
    return RevisionChange(before, current_revision(connection, migrations))


class DatabaseSettings(Protocol):
    """What the migrate command reads of a service's settings."""

    @property
    def database_url(self) -> str: ...


def migrate_command(
    argv: Sequence[str], *, migrations: MigrationSet, database_settings: Callable[[], DatabaseSettings]
) -> int:
    """`python -m services.<service> migrate`: upgrade to head and print the revision (0), or one line (1)."""
    parser = argparse.ArgumentParser(
        prog=migrations.migrate_command,
        description=f"Upgrade the {migrations.service} database to the newest revision, then exit.",
    )
    parser.parse_args(argv)
    # A bad variable exits 2 with one line from the caller's load_settings (services.common.app.settings).
    url = database_settings().database_url
    try:
        change = asyncio.run(_migrate_url(url, migrations))
    except Exception as error:
        print(f"{migrations.service} migrate failed ({_safe_url(url)}): {_describe(error)}", file=sys.stderr)
        return 1
    if change.before == change.after:
        print(f"{migrations.service} database already at revision {change.after} (head)")
    else:
        print(f"{migrations.service} database upgraded from {change.before or 'empty'} to {change.after} (head)")
    return 0


async def _migrate_url(url: str, migrations: MigrationSet) -> RevisionChange:
    # Imported here: runtime imports this module for open_database.
    prepare_sqlite_file(url)
    engine = create_engine(url)
    try:
        return await migrate_to_head(engine, migrations)
    finally:
        await engine.dispose()


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "unparseable database URL"


def _describe(error: BaseException) -> str:
    cause: BaseException = error
    if isinstance(error, DBAPIError) and error.orig is not None:
        # SQLAlchemy's text adds the statement and a link on further lines; the driver's own error says it
        # (the asyncpg adapter wraps asyncpg's, whose class names the cause).
        cause = error.orig.__cause__ or error.orig
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def load_migration_set(service: str) -> MigrationSet:
    """`services.<service>.migrations.MIGRATIONS`: where every service declares its migration set."""
    module = importlib.import_module(f"services.{service}.migrations")
    migrations = getattr(module, "MIGRATIONS", None)
    if not isinstance(migrations, MigrationSet):
        raise CommandError(f"services.{service}.migrations declares no MIGRATIONS")
    return migrations


def next_revision_id(migrations: MigrationSet) -> str:
    """0001, 0002, …: revision ids that sort like the history (file names start with them)."""
    script = ScriptDirectory.from_config(migrations.config())
    numbers = [int(rev.revision) for rev in script.walk_revisions() if rev.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


async def autogenerate_revision(url: str, migrations: MigrationSet, message: str) -> None:
    """Write versions/<next id>_<slug>.py: what the models have that the database (at head) lacks."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_revision, migrations, message)
    finally:
        await engine.dispose()


def _revision(connection: Connection, migrations: MigrationSet, message: str) -> None:
    config = migrations.config(connection)
    command.revision(config, message=message, autogenerate=True, rev_id=next_revision_id(migrations))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.common.persistence.migrations revision --service content -m "add x"`."""
    parser = argparse.ArgumentParser(prog="python -m services.common.persistence.migrations")
    commands = parser.add_subparsers(dest="command", required=True)
    revision = commands.add_parser("revision", help="autogenerate a new revision from the service's models")
    revision.add_argument("--service", required=True, help="content, identity, …")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument(
        "--url", help="compare against this database, which must be at head (default: a new SQLite file)"
    )
    args = parser.parse_args(argv)
    try:
        migrations = load_migration_set(args.service)
        if args.url:
            asyncio.run(autogenerate_revision(args.url, migrations, args.message))
            return 0
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite+aiosqlite:///{Path(folder) / 'head.db'}"
            asyncio.run(_head_then_revision(url, migrations, args.message))
    except (CommandError, ImportError) as error:
        print(f"revision failed: {_describe(error)}", file=sys.stderr)
        return 1
    return 0


async def _head_then_revision(url: str, migrations: MigrationSet, message: str) -> None:
    await _migrate_url(url, migrations)
    await autogenerate_revision(url, migrations, message)


if __name__ == "__main__":
    # Run as a script this file is the module __main__; the services' migration sets are instances of
    # services.common.persistence.migrations.MigrationSet, so the command runs from that module.
    from services.common.persistence.migrations import main as _main

    raise SystemExit(_main())
