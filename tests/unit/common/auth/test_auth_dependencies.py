"""CurrentPrincipal / AdminPrincipal over HTTP: 401 with WWW-Authenticate and the uniform body, 403, OpenAPI."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import jwt
import pytest
from fastapi import FastAPI

from services.common.auth import TokenVerifier, mint_token
from services.common.auth.jwks import JwksCache
from tests.support.auth_tokens import HS_SECRET, claims, forged_token, protected_app, rsa_key
from tests.support.jwks_server import JwksServer

AUDIENCE, ISSUER = "vixen-api", "https://idp.example/"


def hs256(**overrides: object) -> str:
    payload = claims(aud=AUDIENCE, iss=ISSUER)
    payload.update(overrides)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, HS_SECRET, algorithm="HS256")


@pytest.fixture
def jwks_url() -> Iterator[str]:
    server = JwksServer().start()
    server.publish(rsa_key("rsa-a"))
    yield server.url
    server.stop()


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


@pytest.fixture
async def client(jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    verifier = TokenVerifier(
        hs256_secret=HS_SECRET, jwks=JwksCache(jwks_url), audience=AUDIENCE, issuer=ISSUER, leeway_seconds=30
    )
    async for http in _client(protected_app(verifier)):
        yield http


@pytest.fixture
async def jwks_only_client(jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for http in _client(protected_app(TokenVerifier(jwks=JwksCache(jwks_url)))):
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Bearer error="invalid_token", error_description="{reason}"'
    assert response.json() == {
        "error": f"not authenticated: {reason}",
        "error_code": "UNAUTHORIZED",
        "details": {"fields": []},
    }


REFUSED: dict[str, tuple[Callable[[], dict[str, str]], str]] = {
    "no header": (lambda: {}, "missing bearer token"),
    "another scheme": (lambda: {"Authorization": "Basic dXNlcjpwdw=="}, "missing bearer token"),
    "bearer without token": (lambda: {"Authorization": "Bearer"}, "missing bearer token"),
    "garbage": (lambda: bearer("garbage"), "malformed token"),
    "bad signature": (
        lambda: bearer(jwt.encode(claims(aud=AUDIENCE, iss=ISSUER), HS_SECRET[::-1], algorithm="HS256")),
        "bad signature",
    ),
    "expired beyond leeway": (lambda: bearer(hs256(exp=int(time.time()) - 60)), "token expired"),
    "wrong audience": (lambda: bearer(hs256(aud="someone-else")), "wrong audience"),
    "wrong issuer": (lambda: bearer(hs256(iss="https://evil.example/")), "wrong issuer"),
    "missing exp": (lambda: bearer(hs256(exp=None)), "missing exp claim"),
    "missing sub": (lambda: bearer(hs256(sub=None)), "missing sub claim"),
    "alg none": (
        lambda: bearer(forged_token({"alg": "none"}, claims(aud=AUDIENCE, iss=ISSUER))),
        "algorithm not accepted",
    ),
    "unknown kid": (
        lambda: bearer(rsa_key("rsa-a").sign(claims(aud=AUDIENCE, iss=ISSUER), kid="not-published")),
        "unknown signing key",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_refused_tokens_get_a_401_with_a_bearer_challenge(client: httpx.AsyncClient, case: str) -> None:
    headers, reason = REFUSED[case]

    for path in ["/me", "/admin"]:
        assert_unauthorized(await client.get(path, headers=headers()), reason)


async def test_valid_tokens_pass_including_within_the_leeway(client: httpx.AsyncClient) -> None:
    for token in [
        hs256(),
        hs256(exp=int(time.time()) - 10),
        rsa_key("rsa-a").sign(claims("idp|42", aud=AUDIENCE, iss=ISSUER)),
    ]:
        response = await client.get("/me", headers=bearer(token))
        assert response.status_code == 200, response.json()
    assert response.json() == {"subject": "idp|42", "is_admin": False}


async def test_an_hs256_token_is_refused_when_only_a_jwks_is_configured(jwks_only_client: httpx.AsyncClient) -> None:
    key = rsa_key("rsa-a")
    forged = forged_token({"alg": "HS256", "kid": key.kid}, claims(), hmac_key=key.public_pem())

    assert_unauthorized(await jwks_only_client.get("/me", headers=bearer(forged)), "algorithm not accepted")
    assert (await jwks_only_client.get("/me", headers=bearer(key.sign(claims())))).status_code == 200


async def test_a_non_admin_on_an_admin_route_gets_403(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin", headers=bearer(hs256()))

    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')


async def test_an_admin_passes_the_admin_route(client: httpx.AsyncClient) -> None:
    token = mint_token(HS_SECRET, "boss", admin=True, audience=AUDIENCE, issuer=ISSUER)

    response = await client.get("/admin", headers=bearer(token))

    assert (response.status_code, response.json()) == (200, {"subject": "boss"})


def test_the_openapi_document_shows_bearer_security_on_every_authenticated_route() -> None:
    document = protected_app(TokenVerifier(hs256_secret=HS_SECRET)).openapi()

    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ["/me", "/admin"]:
        assert document["paths"][path]["get"]["security"] == [{"HTTPBearer": []}]


async def test_an_app_without_a_verifier_is_a_wiring_error_not_an_open_door() -> None:
    app = protected_app(TokenVerifier(hs256_secret=HS_SECRET))
    del app.state.token_verifier
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/me", headers=bearer(hs256()))

    assert response.status_code == 500
