"""Token hygiene rules that PyJWT leaves open: the token's size and shape, and its date claims as NumericDates."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# A compact JWS: three base64url segments (RFC 7515 §7.1, no padding); an unsigned token has an empty third one.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# IdP access tokens are one to two KiB; a few dozen roles or groups stay well under this.
DEFAULT_MAX_TOKEN_BYTES = 8 * 1024
# Access tokens live minutes to hours; one that stays valid longer than a day is a credential nobody can revoke.
DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600
# 9999-12-31T23:59:59Z: the last second a datetime (here or in any consumer of a claim) can hold.
MAX_NUMERIC_DATE = 253_402_300_799
DATE_CLAIMS = ("exp", "nbf", "iat")


def token_shape_problem(token: str, max_bytes: int) -> str | None:
    """Why `token` is refused before anything of it is decoded (too large, not a compact JWS), or None."""
    # Checked on the characters as they came: a str of non-ASCII text is refused below whatever its byte length.
    if len(token) > max_bytes:
        return "token too large"
    if not token.isascii() or _COMPACT_JWS.fullmatch(token) is None:
        return "malformed token"
    return None


def numeric_date_problem(value: object) -> str | None:
    """Why `value` is not an RFC 7519 NumericDate this service accepts (a JSON number, finite, between the epoch
    and the year 9999), or None when it is one."""
    # bool is an int in Python, and PyJWT's int() would also take "1700000000": neither is a JSON number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "is not a NumericDate"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a NumericDate"
    if not 0 <= value <= MAX_NUMERIC_DATE:
        return "is out of range"
    return None


def date_claims_problem(
    claims: Mapping[str, Any], *, now: float, leeway_seconds: float, max_lifetime_seconds: float
) -> str | None:
    """Why the date claims of verified `claims` refuse the token at `now`, as a reason safe to show, or None.

    `exp` (required elsewhere), `nbf` and `iat` when present must be NumericDates; `exp` must not have passed and lie
    at most `max_lifetime_seconds` ahead, `nbf` and `iat` must not lie ahead; each comparison allows the leeway."""
    for name in DATE_CLAIMS:
        if name in claims:
            problem = numeric_date_problem(claims[name])
            if problem:
                return f"{name} claim {problem}"
    exp = claims.get("exp")
    if exp is not None:
        if exp <= now - leeway_seconds:
            return "token expired"
        if exp > now + max_lifetime_seconds + leeway_seconds:
            return "exp claim is too far in the future"
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + leeway_seconds:
        return "token not yet valid"
    iat = claims.get("iat")
    if iat is not None and iat > now + leeway_seconds:
        return "iat claim is in the future"
    return None
