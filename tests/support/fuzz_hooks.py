"""Schemathesis hook parts shared by the services' fuzz hooks (loaded by the CLI, never by pytest): a positive case
carries a cursor this API could have issued, so that `positive_data_acceptance` judges the rest of the request."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from schemathesis import GenerationMode

from services.common.http.pagination import Cursor

# A well-formed cursor (any time, any id): a page after it is simply empty.
ISSUED_CURSOR = Cursor(datetime(2026, 1, 1, tzinfo=UTC), uuid.UUID(int=0)).encode()


def is_positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode is GenerationMode.POSITIVE


def with_issued_cursor(case: Any) -> Any:
    """A positive case's `cursor` replaced by one the API issues (the schema cannot say which strings those are)."""
    if is_positive(case) and isinstance(case.query, dict) and "cursor" in case.query:
        case.query = {**case.query, "cursor": ISSUED_CURSOR}
    return case
