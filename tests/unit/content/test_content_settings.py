"""Content settings: documented defaults and environment names, admission limits and their bounds, and the key of
signed stream links."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.budget import DEFAULT_MAX_PIXEL_STEPS
from services.content.main import admission_limits
from services.content.settings import ContentSettings
from services.content.signed_links import LinkSigner
from tests.support.service_log import written
from tests.support.settings_env import settings_env

JWT_SECRET = "content-settings-test-jwt-secret-0123456789"
LINK_SECRET = "content-settings-test-link-secret-abcdefghij"
ENV = {
    "RABBITMQ_URL": "amqp://vixen:s3cr3t-pw@127.0.0.1:5672/",
    "R2_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "R2_SECRET_ACCESS_KEY": "q9w8e7r6t5y4u3i2o1p0",
    "R2_BUCKET_NAME": "vixen-loras",
    "AUTH_JWT_SECRET": JWT_SECRET,
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env(monkeypatch, ContentSettings, ENV)


def test_defaults_are_the_documented_ones(env: pytest.MonkeyPatch) -> None:
    settings = ContentSettings()

    assert settings.database_url == "sqlite+aiosqlite:///.run/content.db"
    assert (settings.generation_deadline_seconds, settings.content_image_url_ttl_seconds) == (600, 3600)
    assert (settings.max_wait_seconds, settings.sse_heartbeat_seconds, settings.stream_link_ttl_seconds) == (
        60.0,
        15.0,
        600,
    )


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


def test_default_admission_is_the_workers_bounds_with_the_cost_budget(env: pytest.MonkeyPatch) -> None:
    limits = admission_limits(ContentSettings())

    assert (limits.min_side, limits.max_side, limits.max_steps) == (64, 2048, 100)
    assert limits.max_pixel_steps == DEFAULT_MAX_PIXEL_STEPS == 1024 * 1024 * 50
    assert (limits.max_in_flight, limits.rate_per_minute, limits.burst) == (8, 30.0, 10)
    assert limits.idempotency_ttl_seconds == 24 * 3600


def test_admission_comes_from_its_variables(env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CONTENT_MIN_SIDE": "256",
        "CONTENT_MAX_SIDE": "1024",
        "CONTENT_MAX_STEPS": "40",
        "CONTENT_MAX_PIXEL_STEPS": str(1024 * 1024 * 30),
        "CONTENT_MAX_IN_FLIGHT": "2",
        "CONTENT_SUBMIT_RATE_PER_MINUTE": "1.5",
        "CONTENT_SUBMIT_BURST": "3",
        "CONTENT_IDEMPOTENCY_TTL_SECONDS": "600",
    }.items():
        env.setenv(name, value)

    limits = admission_limits(ContentSettings())

    assert (limits.min_side, limits.max_side, limits.max_steps, limits.max_pixel_steps) == (256, 1024, 40, 31457280)
    assert (limits.max_in_flight, limits.rate_per_minute, limits.burst, limits.idempotency_ttl_seconds) == (
        2,
        1.5,
        3,
        600,
    )


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"CONTENT_MAX_SIDE": "4096"}, "CONTENT_MAX_SIDE"),  # beyond what the worker takes
        ({"CONTENT_MIN_SIDE": "32"}, "CONTENT_MIN_SIDE"),
        ({"CONTENT_MIN_SIDE": "100"}, "CONTENT_MIN_SIDE"),  # not a multiple of 8
        ({"CONTENT_MAX_STEPS": "101"}, "CONTENT_MAX_STEPS"),
        ({"CONTENT_MAX_STEPS": "0"}, "CONTENT_MAX_STEPS"),
        ({"CONTENT_MIN_SIDE": "1024", "CONTENT_MAX_SIDE": "512"}, "CONTENT_MIN_SIDE is larger than CONTENT_MAX_SIDE"),
        ({"CONTENT_MIN_SIDE": "512", "CONTENT_MAX_PIXEL_STEPS": str(512 * 512 - 1)}, "CONTENT_MAX_PIXEL_STEPS"),
        ({"CONTENT_SUBMIT_RATE_PER_MINUTE": "0"}, "CONTENT_SUBMIT_RATE_PER_MINUTE"),
        ({"CONTENT_SUBMIT_BURST": "0"}, "CONTENT_SUBMIT_BURST"),
        ({"CONTENT_MAX_IN_FLIGHT": "0"}, "CONTENT_MAX_IN_FLIGHT"),
        ({"CONTENT_IDEMPOTENCY_TTL_SECONDS": "10"}, "CONTENT_IDEMPOTENCY_TTL_SECONDS"),
        ({"CONTENT_MAX_WAIT_SECONDS": "61"}, "CONTENT_MAX_WAIT_SECONDS"),
    ],
)
def test_admission_that_cannot_work_stops_the_service(
    env: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)

    with pytest.raises(ValidationError, match=named):
        ContentSettings()


def test_the_stream_link_secret_is_used_when_set(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTENT_STREAM_LINK_SECRET", LINK_SECRET)

    settings = ContentSettings()

    assert settings.link_secret() == LINK_SECRET
    assert LINK_SECRET in settings.secret_values()
    assert LINK_SECRET not in repr(settings)


@pytest.mark.parametrize("unset", [None, "", "   "])
def test_without_a_stream_link_secret_the_jwt_secret_is_derived_from(
    env: pytest.MonkeyPatch, unset: str | None
) -> None:
    if unset is not None:
        env.setenv("CONTENT_STREAM_LINK_SECRET", unset)

    settings = ContentSettings()

    assert settings.stream_link_secret is None
    assert settings.link_secret() == JWT_SECRET
    # The link key is derived, never the JWT secret itself: a link signature is no token signature.
    derived = LinkSigner.derived(settings.link_secret(), "content-stream-links", clock=lambda: 0)
    raw = LinkSigner(JWT_SECRET.encode(), clock=lambda: 0)
    assert derived.sign("events", "g", 60) != raw.sign("events", "g", 60)


def test_with_neither_secret_the_service_stops(env: pytest.MonkeyPatch) -> None:
    env.delenv("AUTH_JWT_SECRET")
    env.setenv("AUTH_JWKS_URL", "http://127.0.0.1:9999/.well-known/jwks.json")

    with pytest.raises(ValidationError, match="CONTENT_STREAM_LINK_SECRET"):
        ContentSettings()

    env.setenv("CONTENT_STREAM_LINK_SECRET", LINK_SECRET)
    assert ContentSettings().link_secret() == LINK_SECRET


def test_a_short_stream_link_secret_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTENT_STREAM_LINK_SECRET", "s" * 31)

    with pytest.raises(ValidationError, match="CONTENT_STREAM_LINK_SECRET is shorter than 32 bytes"):
        ContentSettings()


def test_a_placeholder_stream_link_secret_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTENT_STREAM_LINK_SECRET", "x" * 40)

    with pytest.raises(ValidationError, match="CONTENT_STREAM_LINK_SECRET"):
        ContentSettings()


def test_auth_is_required(env: pytest.MonkeyPatch) -> None:
    env.delenv("AUTH_JWT_SECRET")
    env.setenv("CONTENT_STREAM_LINK_SECRET", LINK_SECRET)

    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        ContentSettings()


def test_every_secret_is_listed_for_redaction(env: pytest.MonkeyPatch) -> None:
    secrets = ContentSettings().secret_values()

    assert JWT_SECRET in secrets
    assert ENV["R2_SECRET_ACCESS_KEY"] in secrets and ENV["RABBITMQ_URL"] in secrets


DB_PASSWORD = "db-pa$$word-9"
DB_URL = "postgresql+asyncpg://content:db-pa%24%24word-9@db.internal:5432/content"


def test_the_database_and_broker_passwords_are_secrets(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTENT_DATABASE_URL", DB_URL)

    secrets = ContentSettings().secret_values()

    # The URL, its password as written and percent-decoded; the broker's password alone too.
    assert {DB_URL, "db-pa%24%24word-9", DB_PASSWORD, "s3cr3t-pw"} <= set(secrets)


def test_the_service_log_never_shows_the_database_or_broker_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONTENT_DATABASE_URL", DB_URL)

    text = written(
        ContentSettings().secret_values(),
        ("password authentication failed: %s", (DB_PASSWORD,)),
        ("connecting to %s", (DB_URL,)),
        ("broker refused the login 'vixen'/'%s'", ("s3cr3t-pw",)),
    )

    assert text.count("\n") == 3
    assert DB_PASSWORD not in text and "db-pa%24%24word-9" not in text and "s3cr3t-pw" not in text
