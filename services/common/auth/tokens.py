"""Bearer JWT verification (HS256 secret and/or JWKS keys, chosen by the token's alg) and dev minting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
from jwt.exceptions import InvalidSubjectError

from services.common.auth.claims import (
    DEFAULT_MAX_TOKEN_BYTES,
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    date_claims_problem,
    token_shape_problem,
)
from services.common.auth.jwks import (
    JWKS_ALGORITHMS,
    JWKS_CACHE_SECONDS,
    JWKS_MIN_REFRESH_SECONDS,
    JWKS_TIMEOUT_SECONDS,
    JwksCache,
    KeyNotFound,
)
from services.common.auth.principal import ADMIN_ROLE, Principal, holds_admin_role, subject_problem
from services.common.auth.settings import DEFAULT_ROLES_CLAIM, AuthSettings, short_secret_reason

HS256 = "HS256"
REQUIRED_CLAIMS = ["exp", "sub"]

# Each refusal as a short reason for the caller. PyJWT's own messages are never passed on: some of them
# quote decoded parts of the token.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (InvalidSubjectError, "invalid subject"),
    (jwt.DecodeError, "malformed token"),
)


class InvalidToken(Exception):
    """A refused token; `reason` is short, safe to show the caller, and never holds any of the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing {error.claim} claim"
    return next((reason for kind, reason in _REASONS if isinstance(error, kind)), "invalid token")


class TokenVerifier:
    """Verifies bearer tokens into a Principal; build one per app with `from_settings`."""

    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        jwks: JwksCache | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_seconds: float = 30.0,
        roles_claim: str = DEFAULT_ROLES_CLAIM,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        max_lifetime_seconds: float = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if hs256_secret is None and jwks is None:
            raise ValueError("a TokenVerifier needs an HS256 secret, a JWKS, or both")
        reason = short_secret_reason(hs256_secret) if hs256_secret is not None else None
        if reason:
            raise ValueError(f"the HS256 secret {reason}")
        self._secret = hs256_secret.encode() if hs256_secret is not None else None
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway_seconds
        self._roles_claim = roles_claim
        self._max_token_bytes = max_token_bytes
        self._max_lifetime = max_lifetime_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> TokenVerifier:
        """The verifier the settings describe (no network until the first JWKS token arrives)."""
        jwks = None
        if settings.auth_jwks_url is not None:
            jwks = JwksCache(
                settings.auth_jwks_url,
                cache_seconds=JWKS_CACHE_SECONDS,
                min_refresh_seconds=JWKS_MIN_REFRESH_SECONDS,
                timeout_seconds=JWKS_TIMEOUT_SECONDS,
            )
        secret = settings.auth_jwt_secret
        return cls(
            hs256_secret=secret.get_secret_value() if secret is not None else None,
            jwks=jwks,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            leeway_seconds=settings.auth_leeway_seconds,
            roles_claim=settings.auth_roles_claim,
            max_token_bytes=settings.auth_max_token_bytes,
            max_lifetime_seconds=settings.auth_max_token_lifetime_seconds,
        )

    async def verify(self, token: str) -> Principal:
        """The principal `token` speaks for; InvalidToken when it is refused for any reason."""
        # Before any decoding: a 100 KiB token costs a length check, not a base64 and JSON parse.
        shape = token_shape_problem(token, self._max_token_bytes)
        if shape:
            raise InvalidToken(shape)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        algorithm, key = await self._key_for(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                # Exactly the header's algorithm, already matched to the kind of key: no confusion possible.
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": REQUIRED_CLAIMS,
                    # An audience is checked only when one is configured (PyJWT would refuse any token with one).
                    "verify_aud": self._audience is not None,
                    # PyJWT reads date claims through int(), which takes "1700000000", true and 1e30:
                    # date_claims_problem checks them instead, as RFC 7519 NumericDates.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(_reason(error)) from None
        dates = date_claims_problem(
            claims, now=self._clock(), leeway_seconds=self._leeway, max_lifetime_seconds=self._max_lifetime
        )
        if dates:
            raise InvalidToken(dates)
        problem = subject_problem(claims["sub"])
        if problem:
            raise InvalidToken(f"sub claim {problem}")
        return Principal(claims["sub"], is_admin=holds_admin_role(claims.get(self._roles_claim)), claims=claims)

    async def _key_for(self, header: dict[str, Any]) -> tuple[str, bytes | jwt.PyJWK]:
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm == HS256 and self._secret is not None:
            return HS256, self._secret
        if isinstance(algorithm, str) and algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            if not isinstance(kid, str) or not kid:
                raise InvalidToken("token has no kid")
            try:
                return algorithm, await self._jwks.key(kid)
            except KeyNotFound as error:
                raise InvalidToken(error.reason) from None
        # alg "none", an algorithm we never accept, or HS256 when only a JWKS is configured.
        raise InvalidToken("algorithm not accepted")


def mint_token(
    secret: str,
    subject: str,
    *,
    ttl_seconds: int = 3600,
    admin: bool = False,
    audience: str | None = None,
    issuer: str | None = None,
    roles_claim: str = DEFAULT_ROLES_CLAIM,
    max_lifetime_seconds: int = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
) -> str:
    """An HS256 token for development and tests, shaped as the verifier expects (and refused as it would refuse)."""
    reason = short_secret_reason(secret)
    if reason:
        raise ValueError(f"the signing secret {reason}")
    problem = subject_problem(subject)
    if problem:
        raise ValueError(f"the subject {problem}")
    if ttl_seconds < 1:
        raise ValueError("the ttl must be at least one second")
    if ttl_seconds > max_lifetime_seconds:
        raise ValueError(f"the ttl is longer than the maximum token lifetime ({max_lifetime_seconds} s)")
    issued_at = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": issued_at, "exp": issued_at + ttl_seconds}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    if admin:
        claims[roles_claim] = [ADMIN_ROLE]
    return jwt.encode(claims, secret, algorithm=HS256)
