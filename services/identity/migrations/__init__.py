"""Identity's Alembic migrations: the migration set the service upgrades to at start or by command."""

from services.common.persistence.migrations import MigrationSet
from services.identity.models import Base

MIGRATIONS = MigrationSet(service="identity", package=__name__, metadata=Base.metadata)
