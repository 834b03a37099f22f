"""Content settings: broker, storage, logging, database, auth, deadlines, URL lifetimes, and admission limits."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.common.app.settings import (
    BrokerSettings,
    DatabasePoolSettings,
    GenerationBudgetSettings,
    LoggingSettings,
    SecretCheckedSettings,
    StorageSettings,
    TopologySettings,
    connection_url_secrets,
    database_url_field,
    migrate_on_start_field,
)
from services.common.auth import AuthSettings, auth_secret_values
from services.common.auth.settings import short_secret_reason
from services.common.http.edge import EdgeSettings
from services.common.persistence.retention import RetentionSettings
from services.content.cors import parse_origins

DEFAULT_PORT = 8000
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/content.db"


class ContentDatabaseSettings(DatabasePoolSettings):
    """The database alone: all that `python -m services.content migrate` reads (no broker or storage needed)."""

    database_url: str = database_url_field("content", DEFAULT_DATABASE_URL)
    # CONTENT_MIGRATE_ON_START: false when a separate step runs `migrate`;
    # the service then refuses a database that is not at the head revision.
    migrate_on_start: bool = migrate_on_start_field("content")


class AdmissionSettings(GenerationBudgetSettings):
    """What a submit may ask for and how often: the generation budget (sizes, steps, cost), rate and in-flight
    limits."""

    max_in_flight_per_owner: int = Field(default=8, ge=1, le=10_000, validation_alias="CONTENT_MAX_IN_FLIGHT")
    # A token bucket per owner: `burst` submits at once, then `rate_per_minute`.
    submit_rate_per_minute: float = Field(
        default=30.0, gt=0, le=60_000, validation_alias="CONTENT_SUBMIT_RATE_PER_MINUTE"
    )
    submit_burst: int = Field(default=10, ge=1, le=10_000, validation_alias="CONTENT_SUBMIT_BURST")
    idempotency_ttl_seconds: int = Field(
        default=24 * 3600, ge=60, le=30 * 24 * 3600, validation_alias="CONTENT_IDEMPOTENCY_TTL_SECONDS"
    )


class StreamSettings(SecretCheckedSettings):
    """Event streams and `Prefer: wait`: the caps on how many one replica holds open, the heartbeat, the lifetime."""

    # Per replica (each counts its own): streams and waits are counted apart, each kind under these caps.
    max_streams_per_generation: int = Field(
        default=10, ge=1, le=100_000, validation_alias="CONTENT_MAX_STREAMS_PER_GENERATION"
    )
    max_streams_per_owner: int = Field(default=50, ge=1, le=100_000, validation_alias="CONTENT_MAX_STREAMS_PER_OWNER")
    # Within the process's open-file limit (raised to its hard limit at start), less a reserve for everything else.
    max_streams: int = Field(default=2000, ge=1, le=1_000_000, validation_alias="CONTENT_MAX_STREAMS")
    # SSE streams send a comment this often, and end after stream_max_seconds (less up to a tenth, drawn per stream).
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300, validation_alias="CONTENT_SSE_HEARTBEAT_SECONDS")
    stream_max_seconds: float = Field(default=300.0, gt=0, le=3600, validation_alias="CONTENT_STREAM_MAX_SECONDS")


class SubmitCommandSettings(SecretCheckedSettings):
    """Generations by event (generation.submit from the services of VIXEN_SUBMIT_SERVICES): whose broker user may
    speak for which service."""

    # A command from /vixenbliss/<service> must carry the AMQP user_id <prefix><service> (RabbitMQ checks a user_id
    # against the connection's user): the user services.tools.broker_definitions makes (its --user-prefix).
    submit_broker_user_prefix: str = Field(
        default="vixenbliss-", max_length=64, validation_alias="CONTENT_SUBMIT_BROKER_USER_PREFIX"
    )
    # false only where every service shares one broker user (development): then the `source` and the topic
    # permissions alone say who sent a command.
    submit_require_user_id: bool = Field(default=True, validation_alias="CONTENT_SUBMIT_REQUIRE_USER_ID")
    # Commands handled at once (each takes its owner's quota row for the length of its transaction).
    submit_prefetch: int = Field(default=10, ge=1, le=1000, validation_alias="CONTENT_SUBMIT_PREFETCH")


class ContentSettings(
    EdgeSettings,
    BrokerSettings,
    StorageSettings,
    LoggingSettings,
    TopologySettings,
    AuthSettings,
    AdmissionSettings,
    ContentDatabaseSettings,
    RetentionSettings,
    StreamSettings,
    SubmitCommandSettings,
):
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

    # Prefer: wait=N holds a response at most this long.
    max_wait_seconds: float = Field(default=60.0, ge=0, le=60, validation_alias="CONTENT_MAX_WAIT_SECONDS")
    # Signed event-stream links (for EventSource, which cannot send a token): lifetime, and the key that signs
    # them (every replica needs the same one). Unset: derived from AUTH_JWT_SECRET.
    stream_link_ttl_seconds: int = Field(
        default=600, ge=10, le=24 * 3600, validation_alias="CONTENT_STREAM_LINK_TTL_SECONDS"
    )
    stream_link_secret: SecretStr | None = Field(default=None, validation_alias="CONTENT_STREAM_LINK_SECRET")
    # Origins of browser pages on other hosts that may call the API ("https://app.example.com,http://localhost:5173"
    # or a JSON list). Empty: no CORS headers at all; the playground at /playground is same-origin and needs none.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(default=(), validation_alias="CONTENT_CORS_ORIGINS")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        return parse_origins(value, "CONTENT_CORS_ORIGINS")

    @field_validator("stream_link_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("stream_link_secret", mode="after")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        reason = short_secret_reason(value.get_secret_value()) if value is not None else None
        if reason:
            raise ValueError(f"CONTENT_STREAM_LINK_SECRET {reason}")
        return value

    @model_validator(mode="after")
    def _some_link_key(self) -> Self:
        if self.stream_link_secret is None and self.auth_jwt_secret is None:
            raise ValueError(
                "set CONTENT_STREAM_LINK_SECRET: with AUTH_JWKS_URL alone there is no secret to derive it from"
            )
        return self

    def link_secret(self) -> str:
        """The secret the key of signed stream links is derived from."""
        chosen = self.stream_link_secret or self.auth_jwt_secret
        assert chosen is not None  # _some_link_key
        return chosen.get_secret_value()

    def secret_values(self) -> list[str]:
        """Values the log redaction must never let through."""
        secrets = [
            self.rabbitmq_url.get_secret_value(),
            self.r2_access_key_id.get_secret_value(),
            self.r2_secret_access_key.get_secret_value(),
            *auth_secret_values(self),
            # The broker's and the database's password (and the URLs that carry one).
            *connection_url_secrets(self),
        ]
        if self.stream_link_secret is not None:
            secrets.append(self.stream_link_secret.get_secret_value())
        return secrets
