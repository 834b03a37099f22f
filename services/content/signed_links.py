"""Short-lived signed links: a URL that grants one purpose on one resource until it expires, without a bearer token.

A browser's EventSource cannot send an Authorization header, so the API hands its owner a link whose query carries
`expires` and `signature` (HMAC-SHA256 over purpose, resource and expiry). The link is as good as a token for that
one resource until it expires: it is short-lived, and `signature=` is one of the parameters the log redaction
removes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class SignedLink:
    """The query parameters of a signed link and when it stops working (unix seconds)."""

    expires: int
    signature: str

    def query(self) -> str:
        """`expires=…&signature=…`, to append to the resource's path."""
        return f"expires={self.expires}&signature={self.signature}"


class LinkSigner:
    """Signs and checks links with one key; every replica that checks links needs the key that signed them."""

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a link signing key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._clock = clock

    @classmethod
    def derived(cls, secret: str, context: str, *, clock: Callable[[], float] = time.time) -> LinkSigner:
        """A signer whose key is derived from another secret for one context (the key itself is never reused)."""
        key = hmac.new(secret.encode(), f"signed-links:{context}".encode(), hashlib.sha256).digest()
        return cls(key, clock=clock)

    def sign(self, purpose: str, resource: str, ttl_seconds: int) -> SignedLink:
        """A link for `purpose` on `resource`, valid for ttl_seconds from now."""
        expires = int(self._clock()) + ttl_seconds
        return SignedLink(expires, self._mac(purpose, resource, expires))

    def refusal(self, purpose: str, resource: str, expires: int, signature: str) -> str | None:
        """Why the link is refused (a fixed sentence), or None when it is good now."""
        # As bytes: compare_digest raises TypeError on a str with a non-ASCII character (a forged link).
        if not hmac.compare_digest(self._mac(purpose, resource, expires).encode(), signature.encode()):
            return "the link's signature does not match"
        if expires < self._clock():
            return "the link has expired"
        return None

    def _mac(self, purpose: str, resource: str, expires: int) -> str:
        # JSON, so no purpose/resource pair can be spelled as another by moving a separator between them.
        message = json.dumps([purpose, resource, expires], separators=(",", ":")).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
