"""Settings base classes (pydantic-settings) that refuse missing or placeholder secrets at start."""

from __future__ import annotations

import sys
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class BrokerSettings(SecretCheckedSettings):
    """RabbitMQ connection (the URL carries the password, so it is a secret)."""

    rabbitmq_url: SecretStr = Field(validation_alias="RABBITMQ_URL")


class StorageSettings(SecretCheckedSettings):
    """R2 (production) or any S3 endpoint (moto locally); the seed's env names."""

    r2_endpoint_url: str = Field(validation_alias="R2_ENDPOINT_URL")
    r2_access_key_id: SecretStr = Field(validation_alias="R2_ACCESS_KEY_ID")
    r2_secret_access_key: SecretStr = Field(validation_alias="R2_SECRET_ACCESS_KEY")
    r2_bucket_name: str = Field(validation_alias="R2_BUCKET_NAME", min_length=3)
    r2_public_url: str | None = Field(default=None, validation_alias="R2_PUBLIC_URL")
    # R2 wants "auto"; moto and AWS need a real region such as us-east-1.
    r2_region: str = Field(default="auto", validation_alias="R2_REGION")


class LoggingSettings(SecretCheckedSettings):
    """Log level and format."""

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_json: bool = Field(default=False, validation_alias="LOG_JSON")


def database_url_field(service: str, default: str) -> Any:
    """A `database_url` field read from `<SERVICE>_DATABASE_URL`, else `DATABASE_URL`, else `default`."""
    specific = f"{service.upper().replace('-', '_')}_DATABASE_URL"
    return Field(default=default, validation_alias=AliasChoices(specific, "DATABASE_URL"))


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
