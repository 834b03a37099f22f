"""AuthSettings: a key source is required, short or placeholder secrets and plain-http JWKS are refused, and a
production deployment (VIXEN_ENVIRONMENT) must name the audience and the issuer."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.app.settings import load_settings
from services.common.auth import AuthSettings, auth_secret_values
from services.common.auth.jwks import JWKS_CACHE_SECONDS, JWKS_MIN_REFRESH_SECONDS, JWKS_TIMEOUT_SECONDS
from tests.support.auth_tokens import HS_SECRET
from tests.support.settings_env import settings_env, variables_read_by


def test_neither_secret_nor_jwks_stops_the_service_with_one_line_naming_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_env(monkeypatch, AuthSettings, {})

    with pytest.raises(SystemExit) as stopped:
        load_settings(AuthSettings)

    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert "AUTH_JWT_SECRET" in line and "AUTH_JWKS_URL" in line


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": HS_SECRET})

    settings = AuthSettings()

    assert settings.auth_jwt_secret is not None and settings.auth_jwks_url is None
    assert (settings.auth_audience, settings.auth_issuer) == (None, None)
    assert settings.auth_leeway_seconds == 30
    assert settings.auth_roles_claim == "roles"
    assert (JWKS_CACHE_SECONDS, JWKS_MIN_REFRESH_SECONDS, JWKS_TIMEOUT_SECONDS) == (600, 30, 5)
    assert (settings.auth_max_token_bytes, settings.auth_max_token_lifetime_seconds) == (8192, 86400)
    assert settings.vixen_environment == "development" and not settings.is_production
    assert auth_secret_values(settings) == [HS_SECRET]
    assert HS_SECRET not in repr(settings)


def test_the_retired_jwks_timing_variables_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    retired = ("AUTH_JWKS_CACHE_SECONDS", "AUTH_JWKS_MIN_REFRESH_SECONDS", "AUTH_JWKS_TIMEOUT_SECONDS")
    env = settings_env(monkeypatch, AuthSettings, {"AUTH_JWKS_URL": "https://idp.example/jwks.json"})
    before = AuthSettings().model_dump()

    for name in retired:
        env.setenv(name, "1")

    assert AuthSettings().model_dump() == before
    assert not set(retired) & variables_read_by(AuthSettings)


def test_a_secret_shorter_than_32_bytes_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    short = "Zq7-short-but-not-a-placeholder"
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": short})

    with pytest.raises(SystemExit):
        load_settings(AuthSettings)

    line = capsys.readouterr().err
    assert "AUTH_JWT_SECRET is shorter than 32 bytes" in line
    assert short not in line


@pytest.mark.parametrize("value", ["changeme", "your-jwt-secret-goes-here-please-0123456789"])
def test_a_placeholder_secret_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": value})

    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        AuthSettings()


def test_jwks_only_is_enough_and_empty_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(
        monkeypatch,
        AuthSettings,
        {"AUTH_JWT_SECRET": "", "AUTH_JWKS_URL": "https://idp.example.com/.well-known/jwks.json", "AUTH_AUDIENCE": ""},
    )

    settings = AuthSettings()

    assert settings.auth_jwt_secret is None and settings.auth_audience is None
    assert auth_secret_values(settings) == []


@pytest.mark.parametrize(
    "url", ["http://idp.example.com/jwks.json", "ftp://127.0.0.1/jwks.json", "https:///jwks.json", "jwks.json"]
)
def test_a_jwks_url_must_be_https_beyond_loopback(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWKS_URL": url})

    with pytest.raises(ValidationError, match="AUTH_JWKS_URL"):
        AuthSettings()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.53"])
def test_plain_http_is_allowed_for_a_loopback_jwks(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWKS_URL": f"http://{host}:8080/jwks.json"})

    assert AuthSettings().auth_jwks_url == f"http://{host}:8080/jwks.json"


@pytest.mark.parametrize(
    ("values", "unset"),
    [
        ({}, "AUTH_AUDIENCE, AUTH_ISSUER"),
        ({"AUTH_AUDIENCE": "vixen-api"}, "AUTH_ISSUER"),
        ({"AUTH_ISSUER": "https://idp.example.com/", "AUTH_AUDIENCE": " "}, "AUTH_AUDIENCE"),
    ],
)
def test_production_without_audience_or_issuer_stops_with_one_line_naming_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], values: dict[str, str], unset: str
) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": HS_SECRET, "VIXEN_ENVIRONMENT": "production", **values})

    with pytest.raises(SystemExit) as stopped:
        load_settings(AuthSettings)

    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        "configuration error: VIXEN_ENVIRONMENT=production needs AUTH_AUDIENCE and AUTH_ISSUER; not set: " + unset
    )


@pytest.mark.parametrize("environment", ["production", "Production", " PRODUCTION "])
def test_production_with_audience_and_issuer_starts(monkeypatch: pytest.MonkeyPatch, environment: str) -> None:
    values = {"AUTH_AUDIENCE": "vixen-api", "AUTH_ISSUER": "https://idp.example.com/"}
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": HS_SECRET, "VIXEN_ENVIRONMENT": environment, **values})

    settings = AuthSettings()

    assert settings.is_production and (settings.auth_audience, settings.auth_issuer) == tuple(values.values())


def test_development_leaves_audience_and_issuer_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": HS_SECRET, "VIXEN_ENVIRONMENT": "development"})

    assert AuthSettings().auth_audience is None


@pytest.mark.parametrize("environment", ["prod", "staging", ""])
def test_an_unknown_environment_stops_the_start_instead_of_meaning_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], environment: str
) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": HS_SECRET, "VIXEN_ENVIRONMENT": environment})

    with pytest.raises(SystemExit):
        load_settings(AuthSettings)

    assert "VIXEN_ENVIRONMENT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTH_MAX_TOKEN_BYTES", "1023"),
        ("AUTH_MAX_TOKEN_BYTES", "65537"),
        ("AUTH_MAX_TOKEN_LIFETIME_SECONDS", "59"),
        ("AUTH_MAX_TOKEN_LIFETIME_SECONDS", str(30 * 24 * 3600 + 1)),
    ],
)
def test_the_token_limits_have_bounds(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    settings_env(monkeypatch, AuthSettings, {"AUTH_JWT_SECRET": HS_SECRET, name: value})

    with pytest.raises(ValidationError, match=name):
        AuthSettings()
