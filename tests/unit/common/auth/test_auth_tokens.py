"""TokenVerifier and mint_token: claims, roles, subjects, leeway, audience/issuer, algorithm dispatch."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from services.common.auth import InvalidToken, Principal, TokenVerifier, mint_token
from services.common.auth.jwks import JwksCache
from tests.support.auth_tokens import HS_SECRET, claims, forged_token, rsa_key

# Nothing listens on the discard port: a test that reaches the network would fail, not hang.
UNUSED_JWKS_URL = "http://127.0.0.1:9/jwks.json"


def hs256(payload: dict[str, Any], secret: str = HS_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


async def refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    return refused.value.reason


async def test_a_minted_token_verifies_into_its_principal() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET)

    principal = await verifier.verify(mint_token(HS_SECRET, "owner-7"))
    admin = await verifier.verify(mint_token(HS_SECRET, "owner-8", admin=True))

    assert (principal.subject, principal.is_admin) == ("owner-7", False)
    assert principal.claims["sub"] == "owner-7" and principal.claims["exp"] > time.time()
    assert (admin.subject, admin.is_admin) == ("owner-8", True)


@pytest.mark.parametrize(
    ("roles", "is_admin"),
    [
        (["user", "admin"], True),
        ("user admin", True),
        ("admin", True),
        (["user"], False),
        ("administrator", False),
        ({"admin": True}, False),
        (None, False),
    ],
)
async def test_the_admin_role_comes_from_a_list_or_a_space_separated_string(roles: object, is_admin: bool) -> None:
    payload = claims() if roles is None else claims(roles=roles)

    principal = await TokenVerifier(hs256_secret=HS_SECRET).verify(hs256(payload))

    assert principal.is_admin is is_admin


async def test_the_roles_claim_name_is_configurable() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET, roles_claim="https://vixen.example/roles")

    assert (await verifier.verify(hs256(claims() | {"https://vixen.example/roles": ["admin"]}))).is_admin
    assert not (await verifier.verify(hs256(claims(roles=["admin"])))).is_admin
    minted = mint_token(HS_SECRET, "o", admin=True, roles_claim="https://vixen.example/roles")
    assert (await verifier.verify(minted)).is_admin


@pytest.mark.parametrize("sub", ["auth0|64f1c2", "user@example.com", "5f0c8a1e-0000-4000-8000-000000000000", "é" * 128])
async def test_any_short_printable_subject_is_an_owner_id(sub: str) -> None:
    assert (await TokenVerifier(hs256_secret=HS_SECRET).verify(hs256(claims(sub)))).subject == sub


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        ("", "sub claim is empty or not a string"),
        ("x" * 129, "sub claim is longer than 128 characters"),
        ("owner\n1", "sub claim contains control characters"),
        (42, "invalid subject"),
    ],
)
async def test_unusable_subjects_are_refused(sub: object, reason: str) -> None:
    assert await refusal(TokenVerifier(hs256_secret=HS_SECRET), hs256(claims(sub=sub))) == reason


async def test_a_token_expired_within_the_leeway_is_accepted_beyond_it_refused() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET, leeway_seconds=30)
    now = int(time.time())

    assert (await verifier.verify(hs256({"sub": "o", "exp": now - 10}))).subject == "o"
    assert await refusal(verifier, hs256({"sub": "o", "exp": now - 60})) == "token expired"
    assert await refusal(verifier, hs256(claims(nbf=now + 120))) == "token not yet valid"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"exp": "4102444800"}, "exp claim is not a NumericDate"),
        ({"exp": True}, "exp claim is not a NumericDate"),
        ({"exp": 1e30}, "exp claim is out of range"),
        ({"exp": 10**30}, "exp claim is out of range"),
        ({"nbf": True}, "nbf claim is not a NumericDate"),
        ({"nbf": "0"}, "nbf claim is not a NumericDate"),
        ({"iat": "0"}, "iat claim is not a NumericDate"),
        ({"iat": -1}, "iat claim is out of range"),
    ],
)
async def test_date_claims_must_be_numeric_dates(extra: dict[str, Any], reason: str) -> None:
    assert await refusal(TokenVerifier(hs256_secret=HS_SECRET), hs256(claims() | extra)) == reason


async def test_exp_at_most_the_maximum_lifetime_ahead_and_iat_not_ahead() -> None:
    now = 1_800_000_000
    verifier = TokenVerifier(hs256_secret=HS_SECRET, max_lifetime_seconds=3600, leeway_seconds=30, clock=lambda: now)

    assert (await verifier.verify(hs256({"sub": "o", "exp": now + 3630, "iat": now + 30}))).subject == "o"
    assert await refusal(verifier, hs256({"sub": "o", "exp": now + 3631})) == "exp claim is too far in the future"
    assert (
        await refusal(verifier, hs256({"sub": "o", "exp": now + 60, "iat": now + 31})) == "iat claim is in the future"
    )
    assert (await verifier.verify(hs256({"sub": "o", "exp": now + 60.5}))).claims["exp"] == now + 60.5


async def test_a_token_over_the_size_limit_is_refused_before_it_is_decoded() -> None:
    padded = hs256(claims(pad="x" * 6000))
    verifier = TokenVerifier(hs256_secret=HS_SECRET, max_token_bytes=len(padded) - 1)

    assert await refusal(verifier, padded) == "token too large"
    assert (await TokenVerifier(hs256_secret=HS_SECRET).verify(padded)).subject == "owner-1"
    assert await refusal(TokenVerifier(hs256_secret=HS_SECRET), hs256(claims(pad="x" * 9000))) == "token too large"


async def test_exp_and_sub_are_required() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET)

    assert await refusal(verifier, hs256({"sub": "o"})) == "missing exp claim"
    assert await refusal(verifier, hs256({"exp": int(time.time()) + 60})) == "missing sub claim"


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET, audience="vixen-api", issuer="https://idp.example/")

    ok = await verifier.verify(hs256(claims(aud=["other", "vixen-api"], iss="https://idp.example/")))
    assert ok.subject == "owner-1"
    assert await refusal(verifier, hs256(claims(aud="other", iss="https://idp.example/"))) == "wrong audience"
    assert await refusal(verifier, hs256(claims(aud="vixen-api", iss="https://evil.example/"))) == "wrong issuer"
    assert await refusal(verifier, hs256(claims(iss="https://idp.example/"))) == "missing aud claim"
    assert await refusal(verifier, hs256(claims(aud="vixen-api"))) == "missing iss claim"


async def test_audience_and_issuer_are_not_checked_when_not_configured() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET)

    assert (await verifier.verify(hs256(claims(aud="anything", iss="anyone")))).subject == "owner-1"


async def test_bad_signature_and_malformed_tokens() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET)

    assert await refusal(verifier, hs256(claims(), secret=HS_SECRET + "-other")) == "bad signature"
    for garbage in ["garbage", "a.b.c", "", "eyJhbGciOiJIUzI1NiJ9.e30"]:
        assert await refusal(verifier, garbage) == "malformed token"


async def test_alg_none_and_unexpected_algorithms_are_refused() -> None:
    verifier = TokenVerifier(hs256_secret=HS_SECRET)

    assert await refusal(verifier, forged_token({"alg": "none", "typ": "JWT"}, claims())) == "algorithm not accepted"
    assert await refusal(verifier, jwt.encode(claims(), HS_SECRET * 2, algorithm="HS512")) == "algorithm not accepted"
    assert await refusal(verifier, rsa_key("rsa-a").sign(claims())) == "algorithm not accepted"


async def test_an_hs256_token_is_refused_when_only_a_jwks_is_configured() -> None:
    key = rsa_key("rsa-a")
    verifier = TokenVerifier(jwks=JwksCache(UNUSED_JWKS_URL))
    # The classic confusion: HMAC-signed with the published public key, hoping it is used as the secret.
    forged = forged_token({"alg": "HS256", "kid": key.kid}, claims(), hmac_key=key.public_pem())

    assert await refusal(verifier, forged) == "algorithm not accepted"
    assert await refusal(verifier, hs256(claims())) == "algorithm not accepted"


async def test_with_both_configured_an_hs256_token_signed_with_the_public_key_is_a_bad_signature() -> None:
    key = rsa_key("rsa-a")
    verifier = TokenVerifier(hs256_secret=HS_SECRET, jwks=JwksCache(UNUSED_JWKS_URL))

    forged = forged_token({"alg": "HS256", "kid": key.kid}, claims(), hmac_key=key.public_pem())

    assert await refusal(verifier, forged) == "bad signature"
    assert (await verifier.verify(hs256(claims()))).subject == "owner-1"


async def test_a_jwks_token_without_kid_is_refused_before_any_fetch() -> None:
    token = jwt.encode(claims(), rsa_key("rsa-a").private_key, algorithm="RS256")

    assert await refusal(TokenVerifier(jwks=JwksCache(UNUSED_JWKS_URL)), token) == "token has no kid"


def test_a_verifier_needs_a_key_source_and_a_long_secret() -> None:
    with pytest.raises(ValueError, match="HS256 secret, a JWKS, or both"):
        TokenVerifier()
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        TokenVerifier(hs256_secret="short")


def test_mint_refuses_what_the_services_would_refuse() -> None:
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        mint_token("short", "owner")
    with pytest.raises(ValueError, match="control characters"):
        mint_token(HS_SECRET, "owner\x00")
    with pytest.raises(ValueError, match="ttl"):
        mint_token(HS_SECRET, "owner", ttl_seconds=0)
    with pytest.raises(ValueError, match="format characters"):
        mint_token(HS_SECRET, "owner\u202e")
    with pytest.raises(ValueError, match="leading or trailing spaces"):
        mint_token(HS_SECRET, "owner ")
    with pytest.raises(ValueError, match="NFC"):
        mint_token(HS_SECRET, "e\u0301")
    with pytest.raises(ValueError, match="maximum token lifetime"):
        mint_token(HS_SECRET, "owner", ttl_seconds=24 * 3600 + 1)
    with pytest.raises(ValueError, match="maximum token lifetime"):
        mint_token(HS_SECRET, "owner", ttl_seconds=3601, max_lifetime_seconds=3600)
    assert mint_token(HS_SECRET, "owner", ttl_seconds=24 * 3600)


def test_mint_sets_audience_issuer_and_ttl() -> None:
    token = mint_token(HS_SECRET, "o", ttl_seconds=90, audience="vixen-api", issuer="vixen-dev")

    payload = jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience="vixen-api", issuer="vixen-dev")
    assert payload["exp"] - payload["iat"] == 90
    assert "roles" not in payload


def test_a_principal_keeps_its_claims_out_of_repr() -> None:
    principal = Principal("owner-1", claims={"email": "someone@example.com"})

    assert "someone@example.com" not in repr(principal)
    assert principal == Principal("owner-1")
