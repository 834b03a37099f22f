"""`python -m services.content`: serve; `… migrate`: upgrade its database; `… openapi`: write its document."""

import sys
from pathlib import Path

from services.common.migrations import migrate_command
from services.common.openapi import openapi_command
from services.common.settings import load_settings
from services.content.main import build_app, main
from services.content.migrations import MIGRATIONS
from services.content.settings import ContentDatabaseSettings

if __name__ == "__main__":
    if sys.argv[1:2] == ["migrate"]:
        # Reads the database settings alone: a migration step needs no broker, storage or auth variables.
        raise SystemExit(
            migrate_command(
                sys.argv[2:], migrations=MIGRATIONS, database_settings=lambda: load_settings(ContentDatabaseSettings)
            )
        )
    if sys.argv[1:2] == ["openapi"]:
        raise SystemExit(
            openapi_command(
                sys.argv[2:],
                prog="python -m services.content",
                build_app=build_app,
                default_out=Path("docs/openapi/content.json"),
            )
        )
    raise SystemExit(main())
