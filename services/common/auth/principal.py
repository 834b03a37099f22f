"""Who a verified token speaks for: the owner id (`sub`) and whether it holds the admin role."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ADMIN_ROLE = "admin"
MAX_SUBJECT_LENGTH = 128


@dataclass(frozen=True)
class Principal:
    """The caller of an authenticated request."""

    subject: str
    is_admin: bool = False
    # Left out of repr: claims may carry personal data (email, name) that a logged principal would leak.
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def subject_problem(subject: object) -> str | None:
    """Why `subject` cannot be an owner id, or None when it can (IdPs issue non-UUID subs: any short text)."""
    if not isinstance(subject, str) or not subject:
        return "is empty or not a string"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"is longer than {MAX_SUBJECT_LENGTH} characters"
    if any(unicodedata.category(char) == "Cc" for char in subject):
        return "contains control characters"
    return None


def holds_admin_role(roles: object) -> bool:
    """Whether a roles claim (a list of strings, or one space-separated string) includes the admin role."""
    if isinstance(roles, str):
        return ADMIN_ROLE in roles.split()
    return isinstance(roles, list) and ADMIN_ROLE in roles
