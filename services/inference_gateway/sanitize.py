"""Make error text and details safe to publish: no URL queries (signatures), no tokens, bounded size."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from logsafe.logs import redact

MAX_TEXT = 500
MAX_ITEMS = 20
MAX_DEPTH = 3
# A URL's query and fragment may carry a signature or a token: keep scheme, host and path only.
_URL_TAIL = re.compile(r"(https?://[^\s?#\"'<>]+)[?#][^\s\"'<>]*", re.I)


def sanitize_text(text: str, secrets: Iterable[str] = (), limit: int = MAX_TEXT) -> str:
    """`text` without URL queries, credentials or configured secrets, cut to `limit` characters."""
    cleaned = redact(_URL_TAIL.sub(r"\1", text), secrets)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def sanitize_details(details: Mapping[str, object], secrets: Iterable[str] = ()) -> dict[str, object]:
    """A JSON-safe copy of `details` with every string sanitized and sizes bounded."""
    secret_list = list(secrets)
    cleaned = _sanitize(dict(details), secret_list, 0)
    assert isinstance(cleaned, dict)
    return cleaned


def _sanitize(value: object, secrets: list[str], depth: int) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return sanitize_text(value, secrets)
    if depth >= MAX_DEPTH:
        return sanitize_text(str(value), secrets)
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_ITEMS]
        return {sanitize_text(str(k), secrets, 100): _sanitize(v, secrets, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [_sanitize(v, secrets, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return sanitize_text(str(value), secrets)
