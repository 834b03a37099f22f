"""`python -m services.identity`: serve; `… migrate`: upgrade its database; `… openapi`: write its document."""

import sys

from services.common.app.commands import service_command
from services.common.app.settings import load_settings
from services.identity.main import build_app, main
from services.identity.migrations import MIGRATIONS
from services.identity.settings import IdentityDatabaseSettings

if __name__ == "__main__":
    raise SystemExit(
        service_command(
            sys.argv[1:],
            service="identity",
            serve=main,
            build_app=build_app,
            migrations=MIGRATIONS,
            # The database settings alone: a migration step needs no broker, storage or auth variables.
            database_settings=lambda: load_settings(IdentityDatabaseSettings),
        )
    )
