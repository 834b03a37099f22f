"""Annotated string types shared by the services' request schemas (what a database cannot store is refused)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refusing it here keeps bad input a 422, never a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
"""Any text a database can store."""

NonBlankText = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_blank)]
"""Text with at least one non-space character."""
