"""Identity's migrations: exactly the models' tables (PostgreSQL, SQLite), reversible, and beside content's in one
database without mixing their avatars or outboxes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.events import AvatarCreated
from services.common.messaging.events import new_event
from services.common.messaging.outbox import OutboxRelay, add_to_outbox
from services.common.persistence.db import create_engine, create_session_factory
from services.common.persistence.migrations import downgrade, head_revision, migrate_to_head, schema_differences
from services.content.migrations import MIGRATIONS as CONTENT_MIGRATIONS
from services.content.models import Base as ContentBase
from services.content.models import outbox_table as content_outbox
from services.identity.migrations import MIGRATIONS
from services.identity.models import Base
from services.identity.models import outbox_table as identity_outbox
from tests.support.stack.relay_publisher import RecordingRelayPublisher
from tests.support.stack.service_fixtures import database_url

REPO_ROOT = Path(__file__).resolve().parents[3]


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_builds_exactly_the_models_tables_and_downgrade_removes_them(empty_engine: AsyncEngine) -> None:
    head = head_revision(MIGRATIONS)

    change = await migrate_to_head(empty_engine, MIGRATIONS)

    assert (change.before, change.after) == (None, head)
    async with empty_engine.connect() as connection:
        # The drift check: fails when a model changes without a migration.
        assert await connection.run_sync(schema_differences, MIGRATIONS) == []
        assert await connection.run_sync(_table_names) == {*Base.metadata.tables, "identity_alembic_version"}
    assert (await downgrade(empty_engine, MIGRATIONS, "base")).after is None
    async with empty_engine.connect() as connection:
        assert await connection.run_sync(_table_names) == {"identity_alembic_version"}


async def test_identity_and_content_share_one_database_and_each_relay_publishes_only_its_own_rows(
    pg_url: URL,
) -> None:
    engine = create_engine(pg_url)
    try:
        await asyncio.gather(migrate_to_head(engine, MIGRATIONS), migrate_to_head(engine, CONTENT_MIGRATIONS))
        sessions = create_session_factory(engine)
        event = new_event(
            AvatarCreated(avatar_id="a", owner_id="o", name="V"), source="/vixenbliss/identity", subject="a"
        )
        async with sessions() as session, session.begin():
            await add_to_outbox(session, identity_outbox, event)

        content_relay, identity_relay = RecordingRelayPublisher(), RecordingRelayPublisher()
        assert await OutboxRelay(sessions, content_outbox, content_relay).run_once() == 0
        assert await OutboxRelay(sessions, identity_outbox, identity_relay).run_once() == 1

        assert (content_relay.message_ids, identity_relay.message_ids) == ([], [event.id])
        async with engine.connect() as connection:
            tables = await connection.run_sync(_table_names)
            assert {*Base.metadata.tables, *ContentBase.metadata.tables} <= tables
            assert await connection.run_sync(schema_differences, MIGRATIONS) == []
            assert await connection.run_sync(schema_differences, CONTENT_MIGRATIONS) == []
    finally:
        await engine.dispose()


async def test_the_migrate_command_needs_only_the_database_url(pg_url: URL) -> None:
    # An explicit environment without broker, storage or auth variables: migrating needs none of them.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IDENTITY_DATABASE_URL": database_url(pg_url)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.identity",
        "migrate",
        cwd=REPO_ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == f"identity database upgraded from empty to {head_revision(MIGRATIONS)} (head)"
