"""The gateway's Alembic migrations: the migration set it upgrades to at start or by command."""

from services.common.persistence.migrations import MigrationSet
from services.inference_gateway.models import Base

MIGRATIONS = MigrationSet(service="gateway", package=__name__, metadata=Base.metadata)
