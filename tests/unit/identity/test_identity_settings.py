"""Identity settings: documented defaults and environment names."""

from __future__ import annotations

import pytest

from services.identity.settings import IdentitySettings
from tests.support.settings_env import settings_env

ENV = {
    "RABBITMQ_URL": "amqp://vixen:s3cr3t-pw@127.0.0.1:5672/",
    "R2_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "R2_SECRET_ACCESS_KEY": "q9w8e7r6t5y4u3i2o1p0",
    "R2_BUCKET_NAME": "vixen-loras",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env(monkeypatch, IdentitySettings, ENV)


def test_defaults_are_the_documented_ones(env: pytest.MonkeyPatch) -> None:
    settings = IdentitySettings()

    assert settings.database_url == "sqlite+aiosqlite:///.run/identity.db"
    assert settings.lora_max_bytes == 512 * 1024 * 1024
    assert settings.lora_upload_url_ttl_seconds == 900


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


def test_the_secrets_to_redact_include_the_broker_url_and_the_storage_keys(env: pytest.MonkeyPatch) -> None:
    secrets = IdentitySettings().secret_values()

    assert {ENV["RABBITMQ_URL"], ENV["R2_ACCESS_KEY_ID"], ENV["R2_SECRET_ACCESS_KEY"]} <= set(secrets)
