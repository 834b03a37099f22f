"""Content settings: broker, storage, logging, database (and its migration at start), deadlines, URL lifetimes."""

from __future__ import annotations

from pydantic import Field

from services.common.migrations import migrate_on_start_field
from services.common.runtime import TopologySettings
from services.common.settings import (
    BrokerSettings,
    LoggingSettings,
    SecretCheckedSettings,
    StorageSettings,
    database_url_field,
)

DEFAULT_PORT = 8000
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/content.db"


class ContentDatabaseSettings(SecretCheckedSettings):
    """The database alone: all that `python -m services.content migrate` reads (no broker or storage needed)."""

    database_url: str = database_url_field("content", DEFAULT_DATABASE_URL)
    # CONTENT_MIGRATE_ON_START (else DB_MIGRATE_ON_START): false when a separate step runs `migrate`;
    # the service then refuses a database that is not at the head revision.
    migrate_on_start: bool = migrate_on_start_field("content")


class ContentSettings(BrokerSettings, StorageSettings, LoggingSettings, TopologySettings, ContentDatabaseSettings):
    """Everything the content service reads from the environment."""

    generation_deadline_seconds: int = Field(
        default=600, ge=1, le=24 * 3600, validation_alias="GENERATION_DEADLINE_SECONDS"
    )
    content_image_url_ttl_seconds: int = Field(
        default=3600, ge=1, le=7 * 24 * 3600, validation_alias="CONTENT_IMAGE_URL_TTL_SECONDS"
    )
    # The sweeper fails generations still open this long after their deadline (the gateway gave up by then).
    sweep_interval_seconds: float = Field(
        default=15.0, gt=0, le=3600, validation_alias="GENERATION_SWEEP_INTERVAL_SECONDS"
    )
    sweep_grace_seconds: float = Field(
        default=60.0, ge=0, le=24 * 3600, validation_alias="GENERATION_SWEEP_GRACE_SECONDS"
    )
    # Result events are independent rows: several may be handled at once. Identity events are handled
    # one at a time so that the projection sees them in order.
    results_prefetch: int = Field(default=20, ge=1, le=1000, validation_alias="CONTENT_RESULTS_PREFETCH")

    def secret_values(self) -> list[str]:
        """Values the log redaction must never let through."""
        return [
            self.rabbitmq_url.get_secret_value(),
            self.r2_access_key_id.get_secret_value(),
            self.r2_secret_access_key.get_secret_value(),
        ]
