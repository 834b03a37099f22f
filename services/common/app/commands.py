"""`python -m services.<name> [migrate | openapi]`: the one command line every database-backed service shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fastapi import FastAPI

from services.common.app.openapi import openapi_command
from services.common.persistence.migrations import DatabaseSettings, MigrationSet, migrate_command


def service_command(
    argv: Sequence[str],
    *,
    service: str,
    serve: Callable[[], int],
    build_app: Callable[[], FastAPI],
    migrations: MigrationSet,
    database_settings: Callable[[], DatabaseSettings],
) -> int:
    """Serve; `migrate`: upgrade the database and exit (reads the database settings alone: no broker, storage or
    auth variables needed); `openapi`: write (or `--check`) docs/openapi/<service>.json."""
    prog = f"python -m services.{service}"
    if argv[:1] == ["migrate"]:
        return migrate_command(argv[1:], migrations=migrations, database_settings=database_settings)
    if argv[:1] == ["openapi"]:
        return openapi_command(
            argv[1:], prog=prog, build_app=build_app, default_out=Path(f"docs/openapi/{service}.json")
        )
    return serve()
