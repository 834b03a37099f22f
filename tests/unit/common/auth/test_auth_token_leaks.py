"""No token text reaches a log record, a response body or a response header, on any refusal path."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest

from services.common.auth import TokenVerifier
from services.common.auth.jwks import JwksCache
from tests.support.auth_tokens import HS_SECRET, claims, forged_token, protected_app, rsa_key
from tests.support.jwks_server import JwksServer

AUDIENCE, ISSUER = "vixen-api", "https://idp.example/"
# In every token (as jti, kid or sub), so that a decoded part that leaks is caught as well as the raw text.
CANARY = "canary" + secrets.token_hex(8)


def payload(**overrides: object) -> dict[str, object]:
    values = claims(aud=AUDIENCE, iss=ISSUER, jti=CANARY)
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def hs256(**overrides: object) -> str:
    return jwt.encode(payload(**overrides), HS_SECRET, algorithm="HS256")


@dataclass(frozen=True)
class Case:
    token: Callable[[], str]
    status: int = 401
    path: str = "/me"
    app: str = "healthy"  # which verifier: healthy JWKS + HS256, JWKS only, or a failing JWKS


CASES: dict[str, Case] = {
    "garbage": Case(lambda: f"not-a-jwt-{CANARY}"),
    "three garbage segments": Case(lambda: f"{CANARY}.{CANARY}.{CANARY}"),
    "bad signature": Case(lambda: jwt.encode(payload(), HS_SECRET[::-1], algorithm="HS256")),
    "expired": Case(lambda: hs256(exp=int(time.time()) - 3600)),
    "not yet valid": Case(lambda: hs256(nbf=int(time.time()) + 3600)),
    "wrong audience": Case(lambda: hs256(aud="other")),
    "wrong issuer": Case(lambda: hs256(iss="https://evil.example/")),
    "missing exp": Case(lambda: hs256(exp=None)),
    "missing sub": Case(lambda: hs256(sub=None)),
    "control character in sub": Case(lambda: hs256(sub=f"{CANARY}\n")),
    "sub too long": Case(lambda: hs256(sub=CANARY * 20)),
    "bidi override in sub": Case(lambda: hs256(sub=f"{CANARY}\u202e")),
    "trailing space in sub": Case(lambda: hs256(sub=f"{CANARY} ")),
    "exp as a string": Case(lambda: hs256(exp=str(int(time.time()) + 60))),
    "exp 1e30": Case(lambda: hs256(exp=1e30)),
    "token too large": Case(lambda: hs256(pad=CANARY * 1000)),
    "alg none": Case(lambda: forged_token({"alg": "none", "kid": CANARY}, payload())),
    "HS512": Case(lambda: jwt.encode(payload(), HS_SECRET * 2, algorithm="HS512")),
    "HS256 with only a JWKS": Case(lambda: hs256(), app="jwks-only"),
    "HS256 signed with the public key": Case(
        lambda: forged_token({"alg": "HS256", "kid": "rsa-a"}, payload(), hmac_key=rsa_key("rsa-a").public_pem()),
        app="jwks-only",
    ),
    "RS256 without kid": Case(lambda: jwt.encode(payload(), rsa_key("rsa-a").private_key, algorithm="RS256")),
    "RS256 unknown kid": Case(lambda: rsa_key("rsa-a").sign(payload(), kid=CANARY)),
    "RS256 while the JWKS fails": Case(lambda: rsa_key("rsa-a").sign(payload()), app="failing"),
    "RS256 expired": Case(lambda: rsa_key("rsa-a").sign(payload(exp=int(time.time()) - 3600))),
    "non-admin on an admin route": Case(lambda: hs256(sub=CANARY), status=403, path="/admin"),
}


def leaked_pieces(token: str) -> list[str]:
    """The token, each of its non-trivial segments, and the canary."""
    return [token, CANARY, *(part for part in token.split(".") if len(part) >= 8)]


def record_text(record: logging.LogRecord) -> str:
    """A record as any handler could write it: message, exception text and traceback."""
    parts = [record.getMessage(), record.exc_text or ""]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return " ".join(parts)


@pytest.fixture
def servers() -> Iterator[dict[str, JwksServer]]:
    healthy, failing = JwksServer().start(), JwksServer().start()
    healthy.publish(rsa_key("rsa-a"))
    failing.fail(503, b'{"error": "down"}')
    yield {"healthy": healthy, "failing": failing}
    healthy.stop()
    failing.stop()


@pytest.fixture
async def clients(servers: dict[str, JwksServer]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    verifiers = {
        "healthy": TokenVerifier(
            hs256_secret=HS_SECRET, jwks=JwksCache(servers["healthy"].url), audience=AUDIENCE, issuer=ISSUER
        ),
        "jwks-only": TokenVerifier(jwks=JwksCache(servers["healthy"].url), audience=AUDIENCE, issuer=ISSUER),
        "failing": TokenVerifier(jwks=JwksCache(servers["failing"].url), audience=AUDIENCE, issuer=ISSUER),
    }
    opened = {
        name: httpx.AsyncClient(transport=httpx.ASGITransport(app=protected_app(v)), base_url="http://test")
        for name, v in verifiers.items()
    }
    yield opened
    for http in opened.values():
        await http.aclose()


@pytest.mark.parametrize("name", CASES)
async def test_no_token_text_reaches_logs_or_responses(
    name: str, clients: dict[str, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[name]
    token = case.token()
    caplog.set_level(logging.DEBUG)

    response = await clients[case.app].get(case.path, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == case.status, response.text
    if case.app == "failing":
        assert any(r.levelno == logging.WARNING and "JWKS fetch" in r.getMessage() for r in caplog.records)
    logs = "\n".join(record_text(record) for record in caplog.records)
    exposed = {"body": response.text, "headers": str(dict(response.headers)), "logs": logs}
    for piece in leaked_pieces(token):
        for where, text in exposed.items():
            assert piece not in text, f"token text leaked into the {where}"
