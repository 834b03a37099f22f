"""Content settings: documented defaults and environment names."""

from __future__ import annotations

import pytest

from services.content.settings import ContentSettings
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
    return settings_env(monkeypatch, ContentSettings, ENV)


def test_defaults_are_the_documented_ones(env: pytest.MonkeyPatch) -> None:
    settings = ContentSettings()

    assert settings.database_url == "sqlite+aiosqlite:///.run/content.db"
    assert (settings.generation_deadline_seconds, settings.content_image_url_ttl_seconds) == (600, 3600)


def test_deadline_ttl_and_database_come_from_their_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql+asyncpg://db/shared")
    env.setenv("GENERATION_DEADLINE_SECONDS", "30")
    env.setenv("CONTENT_IMAGE_URL_TTL_SECONDS", "120")

    settings = ContentSettings()

    assert (settings.database_url, settings.generation_deadline_seconds, settings.content_image_url_ttl_seconds) == (
        "postgresql+asyncpg://db/shared",
        30,
        120,
    )
