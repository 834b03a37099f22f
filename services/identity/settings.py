"""Identity settings: broker, storage, logging, database, and the LoRA upload limits."""

from __future__ import annotations

from pydantic import Field

from services.common.runtime import TopologySettings
from services.common.settings import BrokerSettings, LoggingSettings, StorageSettings, database_url_field

DEFAULT_PORT = 8001
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/identity.db"
MIB = 1024 * 1024


class IdentitySettings(BrokerSettings, StorageSettings, LoggingSettings, TopologySettings):
    """Everything the identity service reads from the environment."""

    database_url: str = database_url_field("identity", DEFAULT_DATABASE_URL)
    lora_max_bytes: int = Field(default=512 * MIB, ge=1, validation_alias="LORA_MAX_BYTES")
    lora_upload_url_ttl_seconds: int = Field(
        default=900, ge=1, le=7 * 24 * 3600, validation_alias="LORA_UPLOAD_URL_TTL_SECONDS"
    )

    def secret_values(self) -> list[str]:
        """Values the log redaction must never let through."""
        return [
            self.rabbitmq_url.get_secret_value(),
            self.r2_access_key_id.get_secret_value(),
            self.r2_secret_access_key.get_secret_value(),
        ]
