"""Settings base classes (pydantic-settings) that refuse missing or placeholder secrets at start."""

from __future__ import annotations

import itertools
import sys
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from contracts.budget import (
    DEFAULT_MAX_PIXEL_STEPS,
    WORKER_MAX_SIDE,
    WORKER_MAX_STEPS,
    WORKER_MIN_SIDE,
    GenerationBudget,
)
from contracts.topology import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_RETRY_DELAYS, requester_name_problem
from services.common.app.secret_files import SecretsFolderError, secret_file_sources

# Values copied from templates and docs that must never reach a running service.
PLACEHOLDER_VALUES = frozenset(
    {"changeme", "change-me", "change_me", "changethis", "xxx", "xxxx", "secret", "password", "todo", "none"}
)
PLACEHOLDER_PREFIXES = ("your-", "your_", "<")

S = TypeVar("S", bound=BaseSettings)


def placeholder_reason(value: str) -> str | None:
    """Why `value` is not a usable secret, or None when it is."""
    stripped = value.strip()
    if not stripped:
        return "is empty"
    lowered = stripped.lower()
    if lowered in PLACEHOLDER_VALUES or set(lowered) == {"x"} or lowered.startswith(PLACEHOLDER_PREFIXES):
        # The value itself is never echoed: a real secret may merely look like a placeholder.
        return "is a placeholder value; set a real one"
    return None


class SecretCheckedSettings(BaseSettings):
    """Base: every SecretStr field must hold a real value (and so must the password of a secret URL)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, env_ignore_empty=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # After the environment, the files of VIXEN_SECRETS_DIR (secret_files.py): a variable set in both wins.
        return init_settings, env_settings, dotenv_settings, *secret_file_sources(settings_cls)

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_placeholder_secrets(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, SecretStr):
            return value
        secret = value.get_secret_value()
        reason = placeholder_reason(secret)
        if reason is None and "://" in secret:
            # A URL secret (e.g. amqp://user:password@host): check only its password.
            password = urlsplit(secret).password
            reason = placeholder_reason(password) if password is not None else None
            if reason:
                reason = "has a password that " + reason
        if reason:
            name = env_name(cls, info.field_name or "?")
            raise ValueError(f"{name} {reason}")
        return value


# RabbitMQ refuses messages over 128 MiB; a quorum queue message TTL is kept well under a day here.
MAX_RETRY_STAGES = 20
MAX_RETRY_DELAY_SECONDS = 86_400.0


class BrokerDeliverySettings(SecretCheckedSettings):
    """How consumers treat what they receive: the retry stages' delays and the largest message read."""

    # "1,5,15,60,120": comma-separated seconds, not JSON (NoDecode keeps pydantic-settings from parsing it).
    broker_retry_delays_seconds: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_RETRY_DELAYS, validation_alias="BROKER_RETRY_DELAYS_SECONDS"
    )
    broker_max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, validation_alias="BROKER_MAX_MESSAGE_BYTES", ge=1024, le=128 * 1024 * 1024
    )

    @field_validator("broker_retry_delays_seconds", mode="before")
    @classmethod
    def _split_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("broker_retry_delays_seconds", mode="after")
    @classmethod
    def _growing_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not 1 <= len(value) <= MAX_RETRY_STAGES:
            raise ValueError(f"BROKER_RETRY_DELAYS_SECONDS must list 1 to {MAX_RETRY_STAGES} delays")
        if any(not 0 < delay <= MAX_RETRY_DELAY_SECONDS for delay in value):
            raise ValueError(f"BROKER_RETRY_DELAYS_SECONDS must be over 0 and at most {MAX_RETRY_DELAY_SECONDS:.0f} s")
        if any(later < earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError("BROKER_RETRY_DELAYS_SECONDS must not shrink from one stage to the next")
        return value


class BrokerSettings(BrokerDeliverySettings):
    """RabbitMQ connection (the URL carries the password, so it is a secret) and the consumers' delivery rules."""

    rabbitmq_url: SecretStr = Field(validation_alias="RABBITMQ_URL")
    # all: declare the whole topology at start (one broker user for everything: development, tests). check:
    # declare nothing, only check passively that this service's part exists (its own broker user may configure
    # nothing; the deploy step `python -m services.common.messaging.broker_declare` declared it): production.
    rabbitmq_declare: Literal["all", "check"] = Field(default="all", validation_alias="RABBITMQ_DECLARE")


class StorageSettings(SecretCheckedSettings):
    """R2 (production) or any S3 endpoint (SeaweedFS locally); the seed's env names."""

    r2_endpoint_url: str = Field(validation_alias="R2_ENDPOINT_URL")
    r2_access_key_id: SecretStr = Field(validation_alias="R2_ACCESS_KEY_ID")
    r2_secret_access_key: SecretStr = Field(validation_alias="R2_SECRET_ACCESS_KEY")
    r2_bucket_name: str = Field(validation_alias="R2_BUCKET_NAME", min_length=3)
    r2_public_url: str | None = Field(default=None, validation_alias="R2_PUBLIC_URL")
    # R2 and the local SeaweedFS take "auto"; AWS needs a real region such as us-east-1.
    r2_region: str = Field(default="auto", validation_alias="R2_REGION")


class GenerationBudgetSettings(SecretCheckedSettings):
    """The bounds on one generation: content admits by them and the gateway refuses to run what exceeds them, so
    both read the same variables (set them once for the deployment)."""

    min_side: int = Field(
        default=WORKER_MIN_SIDE,
        ge=WORKER_MIN_SIDE,
        le=WORKER_MAX_SIDE,
        multiple_of=8,
        validation_alias="CONTENT_MIN_SIDE",
    )
    max_side: int = Field(
        default=WORKER_MAX_SIDE,
        ge=WORKER_MIN_SIDE,
        le=WORKER_MAX_SIDE,
        multiple_of=8,
        validation_alias="CONTENT_MAX_SIDE",
    )
    max_steps: int = Field(default=WORKER_MAX_STEPS, ge=1, le=WORKER_MAX_STEPS, validation_alias="CONTENT_MAX_STEPS")
    # The cost budget: width × height × steps of one generation.
    max_pixel_steps: int = Field(
        default=DEFAULT_MAX_PIXEL_STEPS, ge=WORKER_MIN_SIDE**2, validation_alias="CONTENT_MAX_PIXEL_STEPS"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_side > self.max_side:
            raise ValueError("CONTENT_MIN_SIDE is larger than CONTENT_MAX_SIDE")
        if self.max_pixel_steps < self.min_side * self.min_side:
            raise ValueError("CONTENT_MAX_PIXEL_STEPS admits no image: it is below CONTENT_MIN_SIDE squared")
        return self

    def generation_budget(self) -> GenerationBudget:
        """The budget as the pure rule (contracts.budget) takes it."""
        return GenerationBudget(self.min_side, self.max_side, self.max_steps, self.max_pixel_steps)


class LoggingSettings(SecretCheckedSettings):
    """Log level and format."""

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_json: bool = Field(default=False, validation_alias="LOG_JSON")


class DatabasePoolSettings(SecretCheckedSettings):
    """The connection pool of a PostgreSQL database (every service reads the same variables; SQLite files too)."""

    db_pool_size: int = Field(default=5, ge=1, le=1000, validation_alias="DB_POOL_SIZE")
    db_pool_max_overflow: int = Field(default=10, ge=0, le=1000, validation_alias="DB_POOL_MAX_OVERFLOW")
    # A request that cannot get a connection this soon answers 503 with Retry-After, long before a client or a
    # proxy gives up on it (SQLAlchemy's own default is 30 s).
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60, validation_alias="DB_POOL_TIMEOUT_SECONDS")


def database_url_field(service: str, default: str) -> Any:
    """A `database_url` field read from `<SERVICE>_DATABASE_URL`, else `DATABASE_URL`, else `default`."""
    specific = f"{service.upper().replace('-', '_')}_DATABASE_URL"
    return Field(default=default, validation_alias=AliasChoices(specific, "DATABASE_URL"))


def url_password_secrets(url: str | None) -> list[str]:
    """What to redact for a connection URL (amqp://, postgresql://...) that holds a password: the whole URL and
    the password, as written and percent-decoded. Nothing for a URL without one (sqlite:///file.db)."""
    if not url or "://" not in url:
        return []
    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed port or host: the whole value is still worth hiding
        return [url]
    if not password:
        return []
    return list(dict.fromkeys([url, password, unquote(password)]))


def connection_url_secrets(settings: BaseSettings) -> list[str]:
    """`url_password_secrets` of every URL setting (str or SecretStr) of `settings`: the database URLs and the
    broker URL, and any such URL a service adds later, count as secrets without each service listing them."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            found += url_password_secrets(value)
    return list(dict.fromkeys(found))


def env_name(model: type[BaseSettings], field_name: str) -> str:
    """The environment variable a settings field is read from (its first alias, else its name)."""
    field = model.model_fields.get(field_name)
    if field is not None:
        alias = field.validation_alias
        if isinstance(alias, str):
            return alias
        if isinstance(alias, AliasChoices) and alias.choices:
            first = alias.choices[0]
            if isinstance(first, str):
                return first
    prefix = str(model.model_config.get("env_prefix", ""))
    return (prefix + field_name).upper()


def describe_validation_error(model: type[BaseSettings], error: ValidationError) -> str:
    """One line naming each bad variable and why, without echoing any value."""
    parts: list[str] = []
    # pydantic reports the alias it looked for (or the field name); map both back to the env name.
    fields_by_alias = {env_name(model, name).lower(): name for name in model.model_fields}
    for item in error.errors(include_input=False, include_url=False):
        loc = item.get("loc") or ()
        field = str(loc[0]) if loc else ""
        name = env_name(model, fields_by_alias.get(field.lower(), field)) if field else model.__name__
        message = str(item.get("msg", "invalid"))
        if item.get("type") == "missing":
            parts.append(f"{name} is not set")
        elif message.startswith("Value error, "):
            parts.append(message.removeprefix("Value error, "))
        else:
            parts.append(f"{name}: {message}")
    return "configuration error: " + "; ".join(parts)


def load_settings(model: type[S], **overrides: Any) -> S:
    """Build settings from the environment; on error print one clear line and exit with status 2."""
    try:
        return model(**overrides)
    except ValidationError as error:
        print(describe_validation_error(model, error), file=sys.stderr)
        raise SystemExit(2) from None
    except SecretsFolderError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def migrate_on_start_field(service: str) -> Any:
    """A `migrate_on_start` field read from `<SERVICE>_MIGRATE_ON_START`, else true."""
    return Field(default=True, validation_alias=f"{service.upper().replace('-', '_')}_MIGRATE_ON_START")


class TopologySettings(SecretCheckedSettings):
    """The prefix of every exchange and queue name (empty in production; unique per test run), and the services
    that may request generations by event (each adds a reply queue: the deploy step, the broker definitions and
    content must be given the same list)."""

    topology_prefix: str = Field(
        default="", validation_alias="VIXEN_TOPOLOGY_PREFIX", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$"
    )
    # "scheduler,moderation": comma-separated names (NoDecode: not JSON); empty, no generation.submit is taken.
    submit_services: Annotated[tuple[str, ...], NoDecode] = Field(default=(), validation_alias="VIXEN_SUBMIT_SERVICES")

    @field_validator("submit_services", mode="before")
    @classmethod
    def _split_services(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        return value

    @field_validator("submit_services", mode="after")
    @classmethod
    def _service_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            problem = requester_name_problem(name)
            if problem is not None:
                raise ValueError(f"VIXEN_SUBMIT_SERVICES: {problem}")
        return value
