"""`python -m services.content`: serve; `… migrate`: upgrade its database; `… openapi`: write its document."""

import sys

from services.common.app.commands import service_command
from services.common.app.settings import load_settings
from services.content.main import build_app, main
from services.content.migrations import MIGRATIONS
from services.content.settings import ContentDatabaseSettings

if __name__ == "__main__":
    raise SystemExit(
        service_command(
            sys.argv[1:],
            service="content",
            serve=main,
            build_app=build_app,
            migrations=MIGRATIONS,
            # The database settings alone: a migration step needs no broker, storage or auth variables.
            database_settings=lambda: load_settings(ContentDatabaseSettings),
        )
    )
