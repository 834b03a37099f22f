"""Cross-origin access for a service's browser clients: checks the configured origins and installs Starlette's
CORS middleware only when there are some (none configured: no CORS headers at all, same-origin pages only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

# What a browser client of these APIs sends beyond the simple headers: the token, JSON bodies, a submit's key,
# `Prefer: wait`, and EventSource's resume point.
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID")
# What it may read from an answer: where a new generation is, how long to back off, whether a submit was replayed.
EXPOSED_HEADERS = ("Location", "Retry-After", "Idempotent-Replayed")
ALLOWED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PREFLIGHT_MAX_AGE_SECONDS = 600


def parse_origins(value: Any, setting: str) -> tuple[str, ...]:
    """Origins from a setting: a comma-separated string or a JSON list of `scheme://host[:port]`, each checked.

    `*` is refused: these APIs are called with a bearer token, and a page that may call them from anywhere is a
    decision to write down origin by origin, not a wildcard."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{setting} is neither a comma-separated list nor a JSON list") from None
        else:
            value = text.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{setting} must list origins as strings")
    origins = [item.strip().rstrip("/") for item in value if item.strip()]
    for origin in origins:
        reason = _origin_refusal(origin)
        if reason:
            raise ValueError(f"{setting}: {origin!r} {reason}")
    return tuple(dict.fromkeys(origins))


def _origin_refusal(origin: str) -> str | None:
    if origin == "*":
        return "is a wildcard; list each origin (scheme://host[:port])"
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 (read for its check: a port that is not a number raises)
    except ValueError:
        return "is not scheme://host[:port]"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) origin (scheme://host[:port])"
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return "is not a bare origin: no path, query, fragment or user"
    return None


def install_cors(app: FastAPI, origins: Sequence[str]) -> None:
    """Answer cross-origin requests (preflights included) from `origins` only; with none, add nothing.

    Credentials (cookies) are not allowed: the APIs read a bearer token from the Authorization header, which a
    cross-origin request may send once the preflight allows the header."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_credentials=False,
        allow_methods=list(ALLOWED_METHODS),
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        max_age=PREFLIGHT_MAX_AGE_SECONDS,
    )
