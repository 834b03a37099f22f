"""Identity settings: documented defaults and environment names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.identity.quotas import OwnerQuotas
from services.identity.settings import IdentitySettings
from tests.support.service_log import written
from tests.support.settings_env import settings_env

ENV = {
    "RABBITMQ_URL": "amqp://vixen:s3cr3t-pw@127.0.0.1:5672/",
    "R2_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "R2_SECRET_ACCESS_KEY": "q9w8e7r6t5y4u3i2o1p0",
    "R2_BUCKET_NAME": "vixen-loras",
    "AUTH_JWT_SECRET": "an-hs256-secret-of-at-least-32-bytes-0123",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env(monkeypatch, IdentitySettings, ENV)


def test_defaults_are_the_documented_ones(env: pytest.MonkeyPatch) -> None:
    settings = IdentitySettings()

    assert settings.database_url == "sqlite+aiosqlite:///.run/identity.db"
    assert settings.lora_max_bytes == 512 * 1024 * 1024
    assert settings.lora_upload_url_ttl_seconds == 900
    assert settings.lora_base_models == ("sdxl-base-1.0",)
    assert settings.lora_registration_ttl_seconds == 3600
    assert settings.owner_quotas() == OwnerQuotas(
        max_avatars=100, max_open_uploads=5, max_lora_bytes=10 * 1024 * 1024 * 1024
    )


def test_quotas_and_the_registration_life_come_from_their_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("IDENTITY_MAX_AVATARS_PER_OWNER", "7")
    env.setenv("IDENTITY_MAX_OPEN_UPLOADS_PER_OWNER", "2")
    env.setenv("IDENTITY_MAX_LORA_BYTES_PER_OWNER", "4096")
    env.setenv("LORA_REGISTRATION_TTL_SECONDS", "1800")

    settings = IdentitySettings()

    assert settings.owner_quotas() == OwnerQuotas(max_avatars=7, max_open_uploads=2, max_lora_bytes=4096)
    assert settings.lora_registration_ttl_seconds == 1800


def test_a_registration_may_not_expire_before_its_upload_url(env: pytest.MonkeyPatch) -> None:
    env.setenv("LORA_UPLOAD_URL_TTL_SECONDS", "900")
    env.setenv("LORA_REGISTRATION_TTL_SECONDS", "899")

    with pytest.raises(ValidationError, match="LORA_REGISTRATION_TTL_SECONDS must be at least"):
        IdentitySettings()


def test_limits_and_database_come_from_their_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("IDENTITY_DATABASE_URL", "postgresql+asyncpg://db/identity")
    env.setenv("LORA_MAX_BYTES", "1024")
    env.setenv("LORA_UPLOAD_URL_TTL_SECONDS", "60")

    settings = IdentitySettings()

    assert (settings.database_url, settings.lora_max_bytes, settings.lora_upload_url_ttl_seconds) == (
        "postgresql+asyncpg://db/identity",
        1024,
        60,
    )


def test_the_secrets_to_redact_include_the_broker_url_the_storage_keys_and_the_token_secret(
    env: pytest.MonkeyPatch,
) -> None:
    secrets = IdentitySettings().secret_values()

    assert {ENV["RABBITMQ_URL"], ENV["R2_ACCESS_KEY_ID"], ENV["R2_SECRET_ACCESS_KEY"], ENV["AUTH_JWT_SECRET"]} <= set(
        secrets
    )


def test_base_models_are_a_comma_separated_list_of_those_with_a_target_table(env: pytest.MonkeyPatch) -> None:
    env.setenv("LORA_BASE_MODELS", "sdxl-base-1.0, tiny-sdxl-random")
    assert IdentitySettings().lora_base_models == ("sdxl-base-1.0", "tiny-sdxl-random")

    env.setenv("LORA_BASE_MODELS", "sdxl-base-1.0,flux-dev")
    with pytest.raises(ValidationError, match="LORA_BASE_MODELS"):
        IdentitySettings()


def test_without_a_token_secret_or_jwks_url_the_service_does_not_start(env: pytest.MonkeyPatch) -> None:
    env.delenv("AUTH_JWT_SECRET")

    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        IdentitySettings()


DB_PASSWORD = "id-db-p@ss:word"
DB_URL = "postgresql+asyncpg://identity:id-db-p%40ss%3Aword@db.internal:5432/identity"


def test_the_database_and_broker_passwords_are_secrets(env: pytest.MonkeyPatch) -> None:
    env.setenv("IDENTITY_DATABASE_URL", DB_URL)

    secrets = IdentitySettings().secret_values()

    assert {DB_URL, "id-db-p%40ss%3Aword", DB_PASSWORD, "s3cr3t-pw"} <= set(secrets)


def test_a_database_url_without_a_password_adds_nothing(env: pytest.MonkeyPatch) -> None:
    env.setenv("IDENTITY_DATABASE_URL", "postgresql+asyncpg://identity@db.internal/identity")

    assert "postgresql+asyncpg://identity@db.internal/identity" not in IdentitySettings().secret_values()


def test_the_service_log_never_shows_the_database_or_broker_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("IDENTITY_DATABASE_URL", DB_URL)

    text = written(
        IdentitySettings().secret_values(),
        ("password authentication failed: %s", (DB_PASSWORD,)),
        ("broker refused the login 'vixen'/'%s'", ("s3cr3t-pw",)),
    )

    assert text.count("\n") == 2
    assert "id-db-p@ss" not in text and "s3cr3t-pw" not in text
