"""CORS: origins parsed and checked from a setting; headers only for configured origins, none by default."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from services.content.cors import install_cors, parse_origins
from services.content.settings import ContentSettings
from tests.support.settings_env import settings_env
from tests.unit.content.test_content_settings import ENV

ALLOWED = "https://app.example.com"


def _app(origins: tuple[str, ...]) -> FastAPI:
    app = FastAPI()

    @app.get("/thing")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    install_cors(app, origins)
    return app


async def _send(app: FastAPI, method: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        return await client.request(method, "/thing", headers=headers)


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }


async def test_a_preflight_from_an_allowed_origin_gets_the_headers() -> None:
    response = await _send(_app((ALLOWED,)), "OPTIONS", _preflight(ALLOWED))

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "prefer", "last-event-id"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in response.headers


async def test_a_request_from_an_allowed_origin_may_read_the_exposed_headers() -> None:
    response = await _send(_app((ALLOWED,)), "GET", {"Origin": ALLOWED})

    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert exposed == {"location", "retry-after", "idempotent-replayed"}


async def test_another_origin_gets_no_allow_origin() -> None:
    app = _app((ALLOWED,))

    preflight = await _send(app, "OPTIONS", _preflight("https://evil.example.net"))
    simple = await _send(app, "GET", {"Origin": "https://evil.example.net"})

    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    assert simple.status_code == 200
    # Starlette lists the exposed headers on every answer; without an allowed origin the browser reads none of it.
    assert "access-control-allow-origin" not in simple.headers


async def test_with_no_origin_configured_there_are_no_cors_headers_at_all() -> None:
    app = _app(())

    preflight = await _send(app, "OPTIONS", _preflight(ALLOWED))
    simple = await _send(app, "GET", {"Origin": ALLOWED})

    assert preflight.status_code == 405  # no middleware: the route knows no OPTIONS
    for response in (preflight, simple):
        assert not [name for name in response.headers if name.startswith("access-control-")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        (None, ()),
        ("https://a.example.com, http://localhost:5173/", ("https://a.example.com", "http://localhost:5173")),
        ('["https://a.example.com", "https://a.example.com"]', ("https://a.example.com",)),
        (["http://127.0.0.1:8080"], ("http://127.0.0.1:8080",)),
    ],
)
def test_origins_parse_from_a_comma_separated_or_json_list(value: object, expected: tuple[str, ...]) -> None:
    assert parse_origins(value, "X") == expected


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://a.example.com,*",
        "a.example.com",
        "ftp://a.example.com",
        "https://a.example.com/app",
        "https://a.example.com?x=1",
        "https://user@a.example.com",
        "https://a.example.com:port",
        "[1, 2]",
        "[oops",
    ],
)
def test_anything_but_bare_http_origins_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="X"):
        parse_origins(value, "X")


def test_content_reads_its_origins_from_content_cors_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, ContentSettings, ENV)
    assert ContentSettings().cors_origins == ()

    monkeypatch.setenv("CONTENT_CORS_ORIGINS", "https://app.example.com,http://localhost:5173")
    assert ContentSettings().cors_origins == ("https://app.example.com", "http://localhost:5173")

    monkeypatch.setenv("CONTENT_CORS_ORIGINS", "*")
    with pytest.raises(ValidationError, match="CONTENT_CORS_ORIGINS"):
        ContentSettings()
