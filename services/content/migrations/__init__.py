"""Content's Alembic migrations: the migration set the service upgrades to at start or by command."""

from services.common.persistence.migrations import MigrationSet
from services.content.models import Base

MIGRATIONS = MigrationSet(service="content", package=__name__, metadata=Base.metadata)
