"""An IdP's signing keys from its JWKS URL: cached with a TTL, refetched on an unknown kid (rate-limited)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

log = logging.getLogger(__name__)

# Only asymmetric keys come from a JWKS: an HMAC ("oct") key published there would let anyone sign.
JWKS_ALGORITHMS = frozenset({"RS256", "ES256"})

# Fixed, not settings: no deployment has needed other values (the AUTH_JWKS_*_SECONDS variables were retired).
JWKS_CACHE_SECONDS = 600.0  # how long fetched keys count as fresh
JWKS_MIN_REFRESH_SECONDS = 30.0  # fewest seconds between two fetches, whatever the cause
JWKS_TIMEOUT_SECONDS = 5.0  # the whole fetch, connect to last byte


class KeyNotFound(Exception):
    """No usable key for a kid; `reason` (safe to show a caller) tells unknown from unavailable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def insecure_url_reason(url: str) -> str | None:
    """Why `url` may not serve signing keys (plain http beyond loopback), or None when it may."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        # Keys fetched in clear text could be swapped on the way, and then any token would verify.
        return "must use https (plain http only for a loopback host)"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The RS256/ES256 signing keys of a JWKS document, by kid; ValueError when it holds none."""
    if not isinstance(document, dict):
        raise ValueError("the JWKS is not a JSON object")
    keys = {
        key.key_id: key
        for key in jwt.PyJWKSet.from_dict(document)
        if key.key_id and key.algorithm_name in JWKS_ALGORITHMS and key.public_key_use in (None, "sig")
    }
    if not keys:
        raise ValueError("the JWKS has no RS256/ES256 signing key with a kid")
    return keys


class JwksCache:
    """Keys of one JWKS URL; at most one fetch in flight, and at most one per `min_refresh_seconds`."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = JWKS_CACHE_SECONDS,
        min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS,
        timeout_seconds: float = JWKS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        reason = insecure_url_reason(url)
        if reason:
            raise ValueError(f"JWKS URL {reason}")
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._timeout_seconds = timeout_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._last_fetch_failed = False
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key for `kid`, fetching the JWKS when the cache is stale or lacks it; else KeyNotFound."""
        if self._fresh() and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            # Whoever held the lock may just have fetched: then the rate limit says no, and the new keys answer.
            if self._may_fetch():
                await self._fetch()
        key = self._keys.get(kid)
        if key is not None:
            # Possibly stale: while the IdP is unreachable, the keys last fetched keep working.
            return key
        raise KeyNotFound("signing keys unavailable" if self._last_fetch_failed else "unknown signing key")

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._cache_seconds

    def _may_fetch(self) -> bool:
        # A flood of tokens with random kids (or a failing IdP) costs the IdP one request per interval.
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refresh_seconds

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            # A fetch is rare (once per TTL or refresh interval): a client per fetch needs no lifecycle.
            async with asyncio.timeout(self._timeout_seconds), httpx.AsyncClient() as client:
                response = await client.get(self._url, headers={"Accept": "application/json"})
                response.raise_for_status()
                keys = parse_jwks(response.json())
        except (TimeoutError, httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            self._last_fetch_failed = True
            log.warning(
                "JWKS fetch from %s failed (%s: %s); tokens signed with a key not cached are refused",
                self._url,
                type(error).__name__,
                str(error)[:200],
            )
            return
        self._keys = keys
        self._fetched_at = self._attempted_at
        self._last_fetch_failed = False
