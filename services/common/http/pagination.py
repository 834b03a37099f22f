"""Keyset pagination: an opaque cursor over (created_at, id), newest first, and the page shape every list returns."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from services.common.http.errors import FieldError, InvalidRequestError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_CURSOR_LENGTH = 200

PageLimit = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"items per page (1–{MAX_PAGE_SIZE}, default {DEFAULT_PAGE_SIZE})")
]
PageCursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page; absent for the first page",
    ),
]


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: the last item's creation time and id (ties on time broken by id)."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        """The opaque form handed to clients (URL-safe base64 of a small JSON object)."""
        raw = json.dumps({"t": self.created_at.isoformat(), "id": str(self.id)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        """Parse a cursor from a client; a 422 naming `cursor` when it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            data: Any = json.loads(raw)
            created_at = datetime.fromisoformat(data["t"])
            if created_at.tzinfo is None:
                raise ValueError("naive time")
            return cls(created_at, uuid.UUID(data["id"]))
        # AttributeError: an id that is a JSON number or list (uuid.UUID calls str methods on it).
        except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            reason = "not a cursor this API returned"
            raise InvalidRequestError("invalid cursor", fields=[FieldError("cursor", reason)]) from None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next one (None on the last page)."""

    items: Sequence[T]
    next_cursor: str | None


class PageOut(BaseModel, Generic[T]):
    """A page of a list: `items` newest first; pass `next_cursor` back as `cursor` for the next page."""

    items: list[T]
    next_cursor: str | None = Field(description="null on the last page")


def page_of(rows: Sequence[Any], limit: int) -> Page[Any]:
    """A page from `limit + 1` rows fetched newest first: the extra row only says that more exist."""
    items = rows[:limit]
    more = len(rows) > limit
    last = items[-1] if items else None
    return Page(items, Cursor(last.created_at, last.id).encode() if more and last is not None else None)
