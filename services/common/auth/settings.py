"""Auth settings (AUTH_*) that every service with bearer-authenticated routes inherits."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.app.deployment import PRODUCTION, DeploymentSettings
from services.common.auth.claims import DEFAULT_MAX_TOKEN_BYTES, DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
from services.common.auth.jwks import insecure_url_reason

# HS256 with a key shorter than its 32-byte digest is weaker than the algorithm (RFC 7518 §3.2).
MIN_HS256_SECRET_BYTES = 32
DEFAULT_ROLES_CLAIM = "roles"


def short_secret_reason(secret: str) -> str | None:
    """Why `secret` is too short to sign HS256 tokens, or None when it is long enough."""
    if len(secret.encode()) >= MIN_HS256_SECRET_BYTES:
        return None
    return (
        f"is shorter than {MIN_HS256_SECRET_BYTES} bytes; use a random one, "
        "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
    )


def production_auth_problem(environment: str, audience: str | None, issuer: str | None) -> str | None:
    """Why a deployment of this kind may not start with this audience and issuer, or None when it may."""
    if environment != PRODUCTION:
        return None
    # Without them, a token any other service of the same IdP (or the same HS256 key) obtained would be accepted.
    unset = [name for name, value in (("AUTH_AUDIENCE", audience), ("AUTH_ISSUER", issuer)) if value is None]
    if not unset:
        return None
    return f"VIXEN_ENVIRONMENT=production needs AUTH_AUDIENCE and AUTH_ISSUER; not set: {', '.join(unset)}"


class AuthSettings(DeploymentSettings):
    """How bearer JWTs are verified: an HS256 secret, a JWKS URL (RS256/ES256), or both; what a token may be."""

    auth_jwt_secret: SecretStr | None = Field(default=None, validation_alias="AUTH_JWT_SECRET")
    auth_jwks_url: str | None = Field(default=None, validation_alias="AUTH_JWKS_URL")
    auth_audience: str | None = Field(default=None, validation_alias="AUTH_AUDIENCE")
    auth_issuer: str | None = Field(default=None, validation_alias="AUTH_ISSUER")
    auth_leeway_seconds: float = Field(default=30.0, ge=0, le=300, validation_alias="AUTH_LEEWAY_SECONDS")
    auth_roles_claim: str = Field(default=DEFAULT_ROLES_CLAIM, min_length=1, validation_alias="AUTH_ROLES_CLAIM")
    auth_max_token_bytes: int = Field(
        default=DEFAULT_MAX_TOKEN_BYTES, ge=1024, le=64 * 1024, validation_alias="AUTH_MAX_TOKEN_BYTES"
    )
    auth_max_token_lifetime_seconds: int = Field(
        default=DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
        ge=60,
        le=30 * 24 * 3600,
        validation_alias="AUTH_MAX_TOKEN_LIFETIME_SECONDS",
    )

    @field_validator("auth_jwt_secret", "auth_jwks_url", "auth_audience", "auth_issuer", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # Compose files and .env templates write `AUTH_JWKS_URL=` for "not used": read that as absent.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("auth_jwt_secret", mode="after")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        reason = short_secret_reason(value.get_secret_value()) if value is not None else None
        if reason:
            raise ValueError(f"AUTH_JWT_SECRET {reason}")
        return value

    @field_validator("auth_jwks_url", mode="after")
    @classmethod
    def _https_unless_loopback(cls, value: str | None) -> str | None:
        reason = insecure_url_reason(value) if value is not None else None
        if reason:
            raise ValueError(f"AUTH_JWKS_URL {reason}")
        return value

    @model_validator(mode="after")
    def _some_key_source(self) -> Self:
        if self.auth_jwt_secret is None and self.auth_jwks_url is None:
            raise ValueError("set AUTH_JWT_SECRET (HS256) or AUTH_JWKS_URL (RS256/ES256): neither is set")
        return self

    @model_validator(mode="after")
    def _production_names_audience_and_issuer(self) -> Self:
        problem = production_auth_problem(self.vixen_environment, self.auth_audience, self.auth_issuer)
        if problem:
            raise ValueError(problem)
        return self


def auth_secret_values(settings: AuthSettings) -> list[str]:
    """The auth values log redaction must hide (for a service's `secret_values()`)."""
    secret = settings.auth_jwt_secret
    return [secret.get_secret_value()] if secret is not None else []
