"""Settings: seed env names, refusal of missing and placeholder secrets, one-line errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.app.settings import (
    BrokerSettings,
    StorageSettings,
    connection_url_secrets,
    database_url_field,
    load_settings,
    placeholder_reason,
    url_password_secrets,
)
from tests.support.settings_env import settings_env


class ContentLikeSettings(BrokerSettings, StorageSettings):
    database_url: str = database_url_field("content", "sqlite+aiosqlite:///./.run/content.db")


GOOD_ENV = {
    "RABBITMQ_URL": "amqp://vixen:s3cr3t-pw@127.0.0.1:5672/",
    "R2_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "R2_SECRET_ACCESS_KEY": "q9w8e7r6t5y4u3i2o1p0",
    "R2_BUCKET_NAME": "vixen-loras",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env(monkeypatch, ContentLikeSettings, GOOD_ENV)


def test_reads_the_seed_names(env: pytest.MonkeyPatch) -> None:
    settings = ContentLikeSettings()
    assert settings.r2_bucket_name == "vixen-loras"
    assert settings.r2_secret_access_key.get_secret_value() == GOOD_ENV["R2_SECRET_ACCESS_KEY"]
    assert "q9w8e7" not in repr(settings)
    assert settings.database_url.startswith("sqlite+aiosqlite")
    assert settings.r2_region == "auto"


def test_service_database_url_wins_over_the_generic_one(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql+asyncpg://generic/db")
    assert ContentLikeSettings().database_url == "postgresql+asyncpg://generic/db"
    env.setenv("CONTENT_DATABASE_URL", "postgresql+asyncpg://content/db")
    assert ContentLikeSettings().database_url == "postgresql+asyncpg://content/db"


@pytest.mark.parametrize("value", ["changeme", "CHANGEME", "xxx", "xxxxxxxx", "your-secret-key", "", "  "])
def test_placeholder_secrets_are_refused_naming_the_variable(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("R2_SECRET_ACCESS_KEY", value)
    with pytest.raises(ValidationError, match="R2_SECRET_ACCESS_KEY"):
        ContentLikeSettings()


def test_placeholder_password_in_a_secret_url_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("RABBITMQ_URL", "amqp://vixen:changeme@rabbit:5672/")
    with pytest.raises(ValidationError, match="RABBITMQ_URL has a password"):
        ContentLikeSettings()


def test_load_settings_exits_2_with_one_clear_line(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env.delenv("R2_ACCESS_KEY_ID")
    env.setenv("R2_SECRET_ACCESS_KEY", "your-secret-here")
    with pytest.raises(SystemExit) as exited:
        load_settings(ContentLikeSettings)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "R2_ACCESS_KEY_ID is not set" in err
    assert "R2_SECRET_ACCESS_KEY is a placeholder" in err
    assert "your-secret-here" not in err  # values are never echoed


def test_load_settings_returns_valid_settings(env: pytest.MonkeyPatch) -> None:
    assert load_settings(ContentLikeSettings).r2_endpoint_url == GOOD_ENV["R2_ENDPOINT_URL"]


def test_placeholder_reason() -> None:
    assert placeholder_reason("a-real-secret") is None
    assert placeholder_reason("guest") is None  # the local RabbitMQ default is allowed
    assert placeholder_reason("<your key>") is not None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://vixen:hunter22@rabbit:5672/", ["amqp://vixen:hunter22@rabbit:5672/", "hunter22"]),
        (
            "postgresql+asyncpg://vb:p%40ss%3Aword@db/vixen",
            ["postgresql+asyncpg://vb:p%40ss%3Aword@db/vixen", "p%40ss%3Aword", "p@ss:word"],
        ),
        ("postgresql+asyncpg://vb@db/vixen", []),
        ("sqlite+aiosqlite:///.run/content.db", []),
        ("", []),
        (None, []),
    ],
)
def test_url_password_secrets(url: str | None, expected: list[str]) -> None:
    assert url_password_secrets(url) == expected


def test_connection_url_secrets_finds_every_url_setting_with_a_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("RABBITMQ_URL", "amqp://vixen:rabbit-pw-1@rabbit/")
    env.setenv("R2_ENDPOINT_URL", "https://key:endpoint-pw-2@acc.r2.cloudflarestorage.com")

    found = connection_url_secrets(ContentLikeSettings())

    assert {"rabbit-pw-1", "endpoint-pw-2", "amqp://vixen:rabbit-pw-1@rabbit/"} <= set(found)
