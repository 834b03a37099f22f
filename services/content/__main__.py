"""`python -m services.content`: run the content service; `python -m services.content migrate`: upgrade its database."""

import sys

from services.common.migrations import migrate_command
from services.common.settings import load_settings
from services.content.main import main
from services.content.migrations import MIGRATIONS
from services.content.settings import ContentDatabaseSettings

if __name__ == "__main__":
    if sys.argv[1:2] == ["migrate"]:
        # Reads the database settings alone: a migration step needs no broker or storage variables.
        raise SystemExit(
            migrate_command(
                sys.argv[2:], migrations=MIGRATIONS, database_settings=lambda: load_settings(ContentDatabaseSettings)
            )
        )
    raise SystemExit(main())
