"""Content's migrations (PostgreSQL, SQLite): drift, downgrade, concurrent starts, a shared database, the command."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import EventEnvelope
from contracts.events import GenerationStarted
from services.common.app.runtime import open_database
from services.common.messaging.events import new_event
from services.common.messaging.outbox import OutboxRelay, add_to_outbox, make_outbox_table
from services.common.persistence.db import (
    create_all,
    create_engine,
    create_session_factory,
    make_metadata,
)
from services.common.persistence.migrations import (
    DatabaseNotAtHeadError,
    MigrationSet,
    current_revision,
    downgrade,
    head_revision,
    migrate_to_head,
    schema_differences,
)
from services.content.main import create_app
from services.content.migrations import MIGRATIONS
from services.content.models import Base, outbox_table
from services.content.settings import ContentDatabaseSettings, ContentSettings
from tests.support.settings_env import settings_env
from tests.support.stack.relay_publisher import RecordingRelayPublisher
from tests.support.stack.service_fixtures import database_url

REPO_ROOT = Path(__file__).resolve().parents[3]
HEAD = head_revision(MIGRATIONS)


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _unsent_index_sql(connection: Connection) -> str:
    if connection.dialect.name == "postgresql":
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_content_outbox_unsent'"
    else:
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'ix_content_outbox_unsent'"
    return str(connection.execute(text(query)).scalar_one())


async def test_upgrade_to_head_builds_exactly_the_models_tables(empty_engine: AsyncEngine) -> None:
    change = await migrate_to_head(empty_engine, MIGRATIONS)

    assert (change.before, change.after) == (None, HEAD)
    async with empty_engine.connect() as connection:
        # The drift check: fails when a model changes without a migration.
        assert await connection.run_sync(schema_differences, MIGRATIONS) == []
        assert await connection.run_sync(_table_names) == {*Base.metadata.tables, "content_alembic_version"}
        assert "sent_at IS NULL" in await connection.run_sync(_unsent_index_sql)


async def test_downgrade_to_base_leaves_only_the_version_table(empty_engine: AsyncEngine) -> None:
    await migrate_to_head(empty_engine, MIGRATIONS)

    change = await downgrade(empty_engine, MIGRATIONS, "base")

    assert (change.before, change.after) == (HEAD, None)
    async with empty_engine.connect() as connection:
        assert await connection.run_sync(_table_names) == {"content_alembic_version"}
    # And back up again: the downgrade dropped everything the upgrade creates.
    assert (await migrate_to_head(empty_engine, MIGRATIONS)).after == HEAD


async def test_a_second_upgrade_changes_nothing(empty_engine: AsyncEngine) -> None:
    await migrate_to_head(empty_engine, MIGRATIONS)

    change = await migrate_to_head(empty_engine, MIGRATIONS)

    assert (change.before, change.after) == (HEAD, HEAD)


async def test_replicas_upgrading_at_once_take_turns(pg_url: URL) -> None:
    engines = [create_engine(pg_url) for _ in range(3)]
    try:
        changes = await asyncio.gather(*(migrate_to_head(e, MIGRATIONS) for e in engines))

        # One replica upgraded; the others waited on the advisory lock and then found the head.
        assert sorted(str(change.before) for change in changes) == [HEAD, HEAD, "None"]
        assert all(change.after == HEAD for change in changes)
        async with engines[0].connect() as connection:
            assert await connection.run_sync(current_revision, MIGRATIONS) == HEAD
            assert await connection.run_sync(schema_differences, MIGRATIONS) == []
    finally:
        for created in engines:
            await created.dispose()


def _started(generation_id: str) -> EventEnvelope:
    return new_event(
        GenerationStarted(generation_id=generation_id, attempt=1, worker_mode="sync"),
        source="/vixenbliss/tests",
        subject=generation_id,
    )


async def test_another_services_tables_share_the_database_without_mixing(pg_url: URL) -> None:
    other = make_metadata()
    other_outbox = make_outbox_table(other, "other_outbox")
    engine = create_engine(pg_url)
    try:
        await create_all(engine, other)
        await migrate_to_head(engine, MIGRATIONS)
        sessions = create_session_factory(engine)
        ours, theirs = _started("g-content"), _started("g-other")
        async with sessions() as session, session.begin():
            await add_to_outbox(session, outbox_table, ours)
            await add_to_outbox(session, other_outbox, theirs)

        publisher = RecordingRelayPublisher()
        assert await OutboxRelay(sessions, outbox_table, publisher).run_once() == 1

        assert publisher.message_ids == [ours.id]
        async with sessions() as session:
            assert (await session.execute(select(other_outbox.c.sent_at))).scalar_one() is None
        async with engine.connect() as connection:
            # The other service's tables are not content's business: no drift reported for them.
            assert await connection.run_sync(schema_differences, MIGRATIONS) == []
    finally:
        await engine.dispose()


async def _migrate_command(database: str) -> tuple[int, str, str]:
    # An explicit environment: the developer's shell (a DATABASE_URL, say) never leaks in.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONTENT_DATABASE_URL": database}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.content",
        "migrate",
        cwd=REPO_ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def test_the_migrate_command_upgrades_to_head_and_says_so(pg_url: URL) -> None:
    code, stdout, stderr = await _migrate_command(database_url(pg_url))

    assert code == 0, stderr
    assert stdout.strip() == f"content database upgraded from empty to {HEAD} (head)"
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision, MIGRATIONS) == HEAD
    finally:
        await engine.dispose()


async def test_the_migrate_command_fails_in_one_line_when_the_database_is_unreachable() -> None:
    code, stdout, stderr = await _migrate_command("postgresql+asyncpg://postgres:pw@127.0.0.1:1/content")

    assert code == 1
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("content migrate failed (postgresql+asyncpg://postgres:***@127.0.0.1:1/content): ")
    assert "pw" not in stderr.replace("postgres", "")


async def test_without_migrate_on_start_an_empty_database_is_refused(content_settings: ContentSettings) -> None:
    settings = content_settings.model_copy(update={"migrate_on_start": False})
    app = create_app(settings)

    with pytest.raises(DatabaseNotAtHeadError) as refused:
        async with app.router.lifespan_context(app):
            pass

    message = str(refused.value)
    assert "\n" not in message
    assert "run `python -m services.content migrate` first" in message
    assert "CONTENT_MIGRATE_ON_START=true" in message


async def test_without_migrate_on_start_a_database_at_head_is_used(content_settings: ContentSettings) -> None:
    engine = create_engine(content_settings.database_url)
    try:
        await migrate_to_head(engine, MIGRATIONS)
    finally:
        await engine.dispose()
    app = create_app(content_settings.model_copy(update={"migrate_on_start": False}))

    async with app.router.lifespan_context(app):
        assert app.state.content is not None


async def test_open_database_on_sqlite_upgrades_and_the_service_tables_work(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'run' / 'content.db'}"
    async with open_database(url, Base.metadata, MIGRATIONS) as database:
        async with database.sessions() as session, session.begin():
            await add_to_outbox(session, outbox_table, _started("g-sqlite"))
        async with database.sessions() as session:
            row = (await session.execute(select(outbox_table))).mappings().one()
        assert (row["id"], row["sent_at"]) == (1, None)
    async with (
        open_database(url, Base.metadata, MIGRATIONS, migrate=False) as database,
        database.engine.connect() as connection,
    ):
        assert await connection.run_sync(current_revision, MIGRATIONS) == HEAD


def test_migrate_on_start_is_read_from_the_service_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = settings_env(monkeypatch, ContentDatabaseSettings, {})
    assert ContentDatabaseSettings().migrate_on_start is True
    env.setenv("DB_MIGRATE_ON_START", "false")  # the retired shared name: ignored
    assert ContentDatabaseSettings().migrate_on_start is True
    env.setenv("CONTENT_MIGRATE_ON_START", "false")
    assert ContentDatabaseSettings().migrate_on_start is False
    env.setenv("CONTENT_MIGRATE_ON_START", "true")
    assert ContentDatabaseSettings().migrate_on_start is True


def test_a_migration_set_refuses_tables_without_the_service_prefix() -> None:
    metadata = make_metadata()
    make_outbox_table(metadata, "outbox")

    with pytest.raises(ValueError, match=r"tables of content must be named content_\*: outbox"):
        MigrationSet(service="content", package="services.content.migrations", metadata=metadata)
