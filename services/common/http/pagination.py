"""Keyset pagination: an opaque cursor over (created_at, id), newest first, and the page shape every list returns."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from services.common.http.errors import FieldError, InvalidRequestError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# A cursor is 23 bytes in URL-safe base64 without padding (31 characters): the last item's creation time in 7 bytes
# of microseconds since 1970 (big-endian: up to the year 4253), then its id's 16 bytes. Every string of that shape is
# a position, and the documented pattern is exactly that shape (the last character's 2 spare bits are zero), so a
# client or a fuzzer reading the schema knows which strings are cursors: no string the schema allows is refused.
_TIME_BYTES = 7
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
CURSOR_LENGTH = 31
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{30}[AEIMQUYcgkosw048]$"
_CURSOR = re.compile(CURSOR_PATTERN)

PageLimit = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"items per page (1–{MAX_PAGE_SIZE}, default {DEFAULT_PAGE_SIZE})")
]
PageCursor = Annotated[
    str | None,
    Query(
        min_length=CURSOR_LENGTH,
        max_length=CURSOR_LENGTH,
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page, as it was given; absent for the first page",
    ),
]


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: the last item's creation time and id (ties on time broken by id)."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        """The opaque form handed to clients (see CURSOR_PATTERN)."""
        micros = (self.created_at - _EPOCH) // _MICROSECOND
        raw = micros.to_bytes(_TIME_BYTES, "big") + self.id.bytes
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        """Parse a cursor from a client; a 422 naming `cursor` when it is not of the cursors' shape."""
        if not _CURSOR.fullmatch(value):
            reason = "not a cursor this API returned"
            raise InvalidRequestError("invalid cursor", fields=[FieldError("cursor", reason)])
        raw = base64.urlsafe_b64decode(value + "=")
        micros = int.from_bytes(raw[:_TIME_BYTES], "big")
        return cls(_EPOCH + micros * _MICROSECOND, uuid.UUID(bytes=raw[_TIME_BYTES:]))


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
    if not more or last is None:
        return Page(items, None)
    # Rows keep their ids as UUIDs or (content's avatars, named by identity's events) as UUID text.
    return Page(items, Cursor(last.created_at, uuid.UUID(str(last.id))).encode())
