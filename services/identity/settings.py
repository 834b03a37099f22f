"""Identity settings: broker, storage, logging, database, auth, and the LoRA upload rules."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from contracts.lora_targets import KNOWN_BASE_MODELS
from services.common.app.settings import (
    BrokerSettings,
    DatabasePoolSettings,
    LoggingSettings,
    StorageSettings,
    TopologySettings,
    connection_url_secrets,
    database_url_field,
    migrate_on_start_field,
)
from services.common.auth import AuthSettings, auth_secret_values
from services.common.http.edge import EdgeSettings
from services.common.persistence.retention import RetentionSettings
from services.identity.quotas import (
    DEFAULT_MAX_AVATARS,
    DEFAULT_MAX_LORA_BYTES,
    DEFAULT_MAX_OPEN_UPLOADS,
    DEFAULT_REGISTRATION_TTL_SECONDS,
    OwnerQuotas,
)

DEFAULT_PORT = 8001
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/identity.db"
DEFAULT_BASE_MODELS = ("sdxl-base-1.0",)
MIB = 1024 * 1024


class IdentityDatabaseSettings(DatabasePoolSettings):
    """The database alone: all that `python -m services.identity migrate` reads (no broker, storage or auth)."""

    database_url: str = database_url_field("identity", DEFAULT_DATABASE_URL)
    # IDENTITY_MIGRATE_ON_START: false when a separate step runs `migrate`;
    # the service then refuses a database that is not at the head revision.
    migrate_on_start: bool = migrate_on_start_field("identity")


class IdentitySettings(
    EdgeSettings,
    BrokerSettings,
    StorageSettings,
    LoggingSettings,
    TopologySettings,
    AuthSettings,
    IdentityDatabaseSettings,
    RetentionSettings,
):
    """Everything the identity service reads from the environment."""

    lora_max_bytes: int = Field(default=512 * MIB, ge=1, validation_alias="LORA_MAX_BYTES")
    lora_upload_url_ttl_seconds: int = Field(
        default=900, ge=1, le=7 * 24 * 3600, validation_alias="LORA_UPLOAD_URL_TTL_SECONDS"
    )
    # How long a registration stays open for its upload and complete; then the retention loop expires it and deletes
    # its upload object. At least the upload URL's life (checked below).
    lora_registration_ttl_seconds: int = Field(
        default=DEFAULT_REGISTRATION_TTL_SECONDS,
        ge=1,
        le=7 * 24 * 3600,
        validation_alias="LORA_REGISTRATION_TTL_SECONDS",
    )
    # Per-owner quotas (services/identity/quotas.py, docs/identity.md "Quotas").
    max_avatars_per_owner: int = Field(
        default=DEFAULT_MAX_AVATARS, ge=1, le=1_000_000, validation_alias="IDENTITY_MAX_AVATARS_PER_OWNER"
    )
    max_open_uploads_per_owner: int = Field(
        default=DEFAULT_MAX_OPEN_UPLOADS, ge=1, le=10_000, validation_alias="IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER"
    )
    max_lora_bytes_per_owner: int = Field(
        default=DEFAULT_MAX_LORA_BYTES, ge=1, validation_alias="IDENTITY_MAX_LORA_BYTES_PER_OWNER"
    )
    # The base models LoRAs may be registered for (comma-separated); each needs a table in contracts/lora_targets.
    lora_base_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_BASE_MODELS, validation_alias="LORA_BASE_MODELS"
    )

    @field_validator("lora_base_models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("lora_base_models", mode="after")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in KNOWN_BASE_MODELS]
        if unknown or not value:
            known = ", ".join(sorted(KNOWN_BASE_MODELS))
            raise ValueError(f"LORA_BASE_MODELS must list base models with a module table ({known})")
        return value

    @model_validator(mode="after")
    def _registration_outlives_its_url(self) -> Self:
        if self.lora_registration_ttl_seconds < self.lora_upload_url_ttl_seconds:
            raise ValueError(
                "LORA_REGISTRATION_TTL_SECONDS must be at least LORA_UPLOAD_URL_TTL_SECONDS: a registration that "
                "expired while its upload URL still works would leave what is PUT there undeleted"
            )
        return self

    def owner_quotas(self) -> OwnerQuotas:
        """The per-owner quotas these settings give."""
        return OwnerQuotas(
            max_avatars=self.max_avatars_per_owner,
            max_open_uploads=self.max_open_uploads_per_owner,
            max_lora_bytes=self.max_lora_bytes_per_owner,
        )

    def secret_values(self) -> list[str]:
        """Values the log redaction must never let through."""
        return [
            self.rabbitmq_url.get_secret_value(),
            self.r2_access_key_id.get_secret_value(),
            self.r2_secret_access_key.get_secret_value(),
            *auth_secret_values(self),
            # The broker's and the database's password (and the URLs that carry one).
            *connection_url_secrets(self),
        ]
