"""Service runtime helpers: the topology prefix setting, the SQLite folder, aware UTC datetimes on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, Table, insert, select

from services.common.app.runtime import open_database
from services.common.app.settings import TopologySettings
from services.common.persistence.db import prepare_sqlite_file
from services.common.persistence.sqltypes import UtcDateTime


def test_the_topology_prefix_is_read_from_vixen_topology_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIXEN_TOPOLOGY_PREFIX", raising=False)
    assert TopologySettings().topology_prefix == ""
    monkeypatch.setenv("VIXEN_TOPOLOGY_PREFIX", "t-1234")
    assert TopologySettings().topology_prefix == "t-1234"
    monkeypatch.setenv("VIXEN_TOPOLOGY_PREFIX", "no spaces/please")
    with pytest.raises(ValidationError):
        TopologySettings()


def test_the_folder_of_a_sqlite_file_is_created_and_other_urls_are_left_alone(tmp_path: Path) -> None:
    prepare_sqlite_file(f"sqlite+aiosqlite:///{tmp_path}/a/b/service.db")
    prepare_sqlite_file("sqlite+aiosqlite:///:memory:")
    prepare_sqlite_file("postgresql+asyncpg://postgres@127.0.0.1/x")

    assert (tmp_path / "a" / "b").is_dir()


async def test_utc_datetimes_come_back_aware_from_sqlite(tmp_path: Path) -> None:
    metadata = MetaData()
    table = Table("t", metadata, Column("id", Integer, primary_key=True), Column("at", UtcDateTime))
    written = datetime(2026, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))

    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/x/t.db", metadata) as database:
        async with database.sessions() as session, session.begin():
            await session.execute(insert(table).values(id=1, at=written))
        async with database.sessions() as session:
            read = (await session.execute(select(table.c.at))).scalar_one()

    assert read == written and read.tzinfo == UTC


async def test_a_naive_datetime_is_refused(tmp_path: Path) -> None:
    metadata = MetaData()
    table = Table("t", metadata, Column("id", Integer, primary_key=True), Column("at", UtcDateTime))
    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/t.db", metadata) as database:
        session = database.sessions()
        with pytest.raises(Exception, match="naive"):
            await session.execute(insert(table).values(id=1, at=datetime(2026, 1, 1)))
        await session.close()
