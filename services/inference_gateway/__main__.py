"""`python -m services.inference_gateway`: serve; `… migrate`: upgrade its job database and exit."""

import sys

from services.common.app.settings import load_settings
from services.common.persistence.migrations import migrate_command
from services.inference_gateway.main import main
from services.inference_gateway.migrations import MIGRATIONS
from services.inference_gateway.settings import GatewayDatabaseSettings

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["migrate"]:
        # The database settings alone: a migration step needs no broker, storage or worker variables.
        raise SystemExit(
            migrate_command(
                argv[1:], migrations=MIGRATIONS, database_settings=lambda: load_settings(GatewayDatabaseSettings)
            )
        )
    raise SystemExit(main(argv))
