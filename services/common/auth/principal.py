"""Who a verified token speaks for: the owner id (`sub`) and whether it holds the admin role."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ADMIN_ROLE = "admin"
MAX_SUBJECT_LENGTH = 128

# Unicode categories no owner id may hold: control (Cc), format (Cf: bidi overrides and isolates, zero-width
# characters, the BOM, soft hyphen, tags), line and paragraph separators (Zl, Zp), private use (Co), surrogates
# (Cs) and unassigned code points (Cn, as of the Python's Unicode version), each with the reason it gets.
_REFUSED_CATEGORIES = {
    "Cc": "contains control characters",
    "Cf": "contains invisible or format characters",
    "Zl": "contains line or paragraph separators",
    "Zp": "contains line or paragraph separators",
    "Co": "contains private-use, surrogate or unassigned code points",
    "Cs": "contains private-use, surrogate or unassigned code points",
    "Cn": "contains private-use, surrogate or unassigned code points",
}
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) outside Cf and Cn: combining grapheme joiner, Hangul
# fillers, Khmer inherent vowels, Mongolian and other variation selectors. They render as nothing, so "alice" and
# "alice" + U+FE0F would look like one owner.
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180D),
    (0x180F, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)


@dataclass(frozen=True)
class Principal:
    """The caller of an authenticated request."""

    subject: str
    is_admin: bool = False
    # Left out of repr: claims may carry personal data (email, name) that a logged principal would leak.
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def subject_problem(subject: object) -> str | None:
    """Why `subject` cannot be an owner id, or None when it can.

    IdPs issue non-UUID subjects, so any short text is allowed that has one spelling only: owner ids are stored and
    compared as text, and two strings that look alike or are canonically equal must never name two owners (or one
    owner twice). So: 1-128 characters; none of the refused categories or invisible code points; U+0020 is the only
    space, never first or last; and the text is in Unicode NFC (refused otherwise, never normalised here: the IdP's
    string is the owner id as it is)."""
    if not isinstance(subject, str) or not subject:
        return "is empty or not a string"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"is longer than {MAX_SUBJECT_LENGTH} characters"
    for char in subject:
        category = unicodedata.category(char)
        refused = _REFUSED_CATEGORIES.get(category)
        if refused:
            return refused
        if category == "Zs" and char != " ":
            return "contains spaces other than U+0020"
        if _invisible(ord(char)):
            return "contains invisible or format characters"
    if subject != subject.strip(" "):
        return "has leading or trailing spaces"
    if not unicodedata.is_normalized("NFC", subject):
        return "is not in Unicode NFC form"
    return None


def _invisible(code_point: int) -> bool:
    return any(low <= code_point <= high for low, high in _INVISIBLE_RANGES)


def holds_admin_role(roles: object) -> bool:
    """Whether a roles claim (a list of strings, or one space-separated string) includes the admin role."""
    if isinstance(roles, str):
        return ADMIN_ROLE in roles.split()
    return isinstance(roles, list) and ADMIN_ROLE in roles
