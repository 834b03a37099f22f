"""JWKS verification against a real loopback JWKS endpoint: RS256/ES256, rotation, rate limit, TTL, failures."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator

import pytest

from services.common.auth import InvalidToken, TokenVerifier
from services.common.auth.jwks import JwksCache
from tests.support.auth_tokens import claims, ec_key, rsa_key
from tests.support.jwks_server import JwksServer

MIN_REFRESH, TTL = 30.0, 600.0


class FakeClock:
    """A monotonic clock the test moves by hand, so that intervals pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[JwksServer]:
    jwks = JwksServer().start()
    jwks.publish(rsa_key("rsa-a"), ec_key("ec-a"))
    yield jwks
    jwks.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def verifier_for(url: str, clock: FakeClock, *, timeout_seconds: float = 5.0) -> TokenVerifier:
    cache = JwksCache(
        url, cache_seconds=TTL, min_refresh_seconds=MIN_REFRESH, timeout_seconds=timeout_seconds, clock=clock
    )
    return TokenVerifier(jwks=cache)


async def refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    return refused.value.reason


async def test_rs256_and_es256_tokens_verify_with_one_fetch(server: JwksServer, clock: FakeClock) -> None:
    verifier = verifier_for(server.url, clock)

    assert (await verifier.verify(rsa_key("rsa-a").sign(claims("rsa-owner")))).subject == "rsa-owner"
    assert (await verifier.verify(ec_key("ec-a").sign(claims("ec-owner")))).subject == "ec-owner"
    assert server.fetches == 1


async def test_concurrent_requests_on_a_cold_cache_share_one_fetch(server: JwksServer, clock: FakeClock) -> None:
    verifier = verifier_for(server.url, clock)
    token = rsa_key("rsa-a").sign(claims())

    principals = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))

    assert {p.subject for p in principals} == {"owner-1"}
    assert server.fetches == 1


async def test_a_rotated_key_is_accepted_after_one_refetch(server: JwksServer, clock: FakeClock) -> None:
    verifier = verifier_for(server.url, clock)
    await verifier.verify(rsa_key("rsa-a").sign(claims()))
    clock.advance(MIN_REFRESH + 1)
    server.publish(rsa_key("rsa-b"))
    rotated = rsa_key("rsa-b").sign(claims("rotated"))

    assert (await verifier.verify(rotated)).subject == "rotated"
    assert server.fetches == 2
    assert (await verifier.verify(rotated)).subject == "rotated"
    assert server.fetches == 2
    # The refetched set no longer holds the retired key.
    assert await refusal(verifier, rsa_key("rsa-a").sign(claims())) == "unknown signing key"


async def test_a_flood_of_unknown_kids_refetches_at_most_once_per_interval(
    server: JwksServer, clock: FakeClock
) -> None:
    verifier = verifier_for(server.url, clock)
    await verifier.verify(rsa_key("rsa-a").sign(claims()))

    def random_kid_token() -> str:
        return rsa_key("rsa-a").sign(claims(), kid=secrets.token_hex(8))

    flood = await asyncio.gather(*(refusal(verifier, random_kid_token()) for _ in range(50)))
    assert set(flood) == {"unknown signing key"}
    assert server.fetches == 1

    clock.advance(MIN_REFRESH)
    assert await refusal(verifier, random_kid_token()) == "unknown signing key"
    assert server.fetches == 2
    for _ in range(20):
        assert await refusal(verifier, random_kid_token()) == "unknown signing key"
    assert server.fetches == 2
    # Known keys are still served from the cache meanwhile.
    assert (await verifier.verify(ec_key("ec-a").sign(claims()))).subject == "owner-1"
    assert server.fetches == 2


async def test_keys_are_refetched_when_the_cache_expires(server: JwksServer, clock: FakeClock) -> None:
    verifier = verifier_for(server.url, clock)
    token = rsa_key("rsa-a").sign(claims())
    await verifier.verify(token)

    clock.advance(TTL - 1)
    await verifier.verify(token)
    assert server.fetches == 1
    clock.advance(1)
    await verifier.verify(token)
    assert server.fetches == 2


async def test_cached_keys_outlive_a_failing_refresh(
    server: JwksServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = verifier_for(server.url, clock)
    await verifier.verify(rsa_key("rsa-a").sign(claims()))
    server.fail(503)
    clock.advance(TTL + 1)

    assert (await verifier.verify(rsa_key("rsa-a").sign(claims("stale-but-fine")))).subject == "stale-but-fine"
    assert server.fetches == 2
    assert [r.levelno for r in caplog.records if "JWKS fetch" in r.getMessage()] == [logging.WARNING]
    assert await refusal(verifier, rsa_key("rsa-b").sign(claims())) == "signing keys unavailable"
    assert server.fetches == 2  # the failed attempt counts against the refresh interval too


async def test_verification_recovers_once_the_jwks_answers_again(server: JwksServer, clock: FakeClock) -> None:
    server.fail(500)
    verifier = verifier_for(server.url, clock)
    token = rsa_key("rsa-a").sign(claims())
    assert await refusal(verifier, token) == "signing keys unavailable"

    server.publish(rsa_key("rsa-a"))
    assert await refusal(verifier, token) == "signing keys unavailable"  # within the interval: no new fetch
    clock.advance(MIN_REFRESH)

    assert (await verifier.verify(token)).subject == "owner-1"
    assert server.fetches == 2


HMAC_ONLY = {"keys": [{"kty": "oct", "kid": "rsa-a", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ"}]}
BROKEN_ANSWERS: dict[str, tuple[int, bytes]] = {
    "status 503": (503, b"unavailable"),
    "not JSON": (200, b"<html>login</html>"),
    "JSON list": (200, b"[]"),
    "no keys": (200, b'{"keys": []}'),
    "only an HMAC key": (200, json.dumps(HMAC_ONLY).encode()),
}


@pytest.mark.parametrize("breakage", [*BROKEN_ANSWERS, "stalls past the timeout", "down"])
async def test_a_failing_jwks_is_a_401_and_a_warning_never_an_error(
    server: JwksServer, clock: FakeClock, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    if breakage in BROKEN_ANSWERS:
        server.fail(*BROKEN_ANSWERS[breakage])
    elif breakage == "stalls past the timeout":
        server.stall()
    else:
        server.stop()
    verifier = verifier_for(server.url, clock, timeout_seconds=0.3)

    assert await refusal(verifier, rsa_key("rsa-a").sign(claims())) == "signing keys unavailable"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "JWKS fetch" in r.getMessage()]
    assert len(warnings) == 1
    assert server.url in warnings[0].getMessage()


def test_a_jwks_url_must_be_https_unless_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        JwksCache("http://idp.example.com/.well-known/jwks.json")
    JwksCache("https://idp.example.com/.well-known/jwks.json")
    JwksCache("http://localhost:8080/jwks.json")
