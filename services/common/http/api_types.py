"""Annotated types for the services' request schemas: text rules (in the OpenAPI schema too) and strict numbers."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

# No C0/C1 control characters (NUL, escape, carriage return, …): a database or a log line would choke on them,
# and they are never meant in a name. The patterns are the documentation; the validators give the reasons.
SINGLE_LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# The same, but at least one character that is not a space.
NON_BLANK_SINGLE_LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
# Descriptions may break lines (\n); every other control character is refused.
MULTILINE_PATTERN = r"^[^\x00-\x09\x0b-\x1f\x7f-\x9f]*$"

_SINGLE_LINE = re.compile(SINGLE_LINE_PATTERN)
_MULTILINE = re.compile(MULTILINE_PATTERN)


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refusing it here keeps bad input a 422, never a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _single_line(value: str) -> str:
    if not _SINGLE_LINE.match(value):
        raise ValueError("must not contain control characters (line breaks, tabs, escapes)")
    return value


def _multiline(value: str) -> str:
    if not _MULTILINE.match(value):
        raise ValueError("must not contain control characters other than line breaks")
    return value


def _nfc(value: str) -> str:
    # One spelling per text: "é" typed as one code point or as e + accent compares and sorts the same.
    return unicodedata.normalize("NFC", value)


Text = Annotated[str, AfterValidator(_no_nul)]
"""Any text a database can store."""

NonBlankText = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_blank)]
"""Text with at least one non-space character."""

NonBlankSingleLineText = Annotated[
    str,
    Field(json_schema_extra={"pattern": NON_BLANK_SINGLE_LINE_PATTERN}),
    AfterValidator(_single_line),
    AfterValidator(_not_blank),
    AfterValidator(_nfc),
]
"""One line without control characters and not blank, NFC-normalised (names)."""

MultilineText = Annotated[
    str, Field(json_schema_extra={"pattern": MULTILINE_PATTERN}), AfterValidator(_multiline), AfterValidator(_nfc)
]
"""Text that may break lines but holds no other control character, NFC-normalised (descriptions)."""

NonBlankMultilineText = Annotated[MultilineText, AfterValidator(_not_blank)]
"""MultilineText with at least one character that is not a space (prompts)."""


def _integral_float_as_int(value: object) -> object:
    # JSON Schema counts 1.0 as an integer; strictness is about "1" and true, not about how a client prints 1.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# JSON numbers only: pydantic's lax mode would take "0.5" or true for a number, which a typed client never sends.
StrictFloat = Annotated[float, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]
INTEGRAL_FLOAT_AS_INT = BeforeValidator(_integral_float_as_int)
"""Use as `Annotated[int, Field(strict=True, ge=…), INTEGRAL_FLOAT_AS_INT]`: after the Field, so that its bounds
still reach the JSON schema as minimum/maximum (pydantic cannot push them through a validator placed before)."""
