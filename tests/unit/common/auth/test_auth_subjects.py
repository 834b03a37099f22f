"""Owner ids (`sub`): short text with one spelling only; control, bidi, invisible and odd space characters refused."""

from __future__ import annotations

import pytest

from services.common.auth.principal import MAX_SUBJECT_LENGTH, subject_problem


@pytest.mark.parametrize(
    "subject",
    [
        "auth0|64f1c2",
        "user@example.com",
        "5f0c8a1e-0000-4000-8000-000000000000",
        "repo:org/name:ref:refs/heads/main",
        "Jane Doe",
        "é" * MAX_SUBJECT_LENGTH,
        "東京-ユーザー",
        "Ωμέγα",
        "עברית",  # right-to-left text is fine; only the invisible characters that reorder it are refused
        "😀",
    ],
)
def test_printable_text_of_one_spelling_is_an_owner_id(subject: str) -> None:
    assert subject_problem(subject) is None


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("", "is empty or not a string"),
        (42, "is empty or not a string"),
        (None, "is empty or not a string"),
        ("x" * (MAX_SUBJECT_LENGTH + 1), "is longer than 128 characters"),
        ("owner\n1", "contains control characters"),
        ("owner\t1", "contains control characters"),
        ("owner\x7f", "contains control characters"),
        ("owner\x85", "contains control characters"),  # NEL
        ("admin\u202e", "contains invisible or format characters"),  # right-to-left override
        ("\u2066alice\u2069", "contains invisible or format characters"),  # isolates
        ("al\u200bice", "contains invisible or format characters"),  # zero-width space
        ("al\u200dice", "contains invisible or format characters"),  # zero-width joiner
        ("\ufeffalice", "contains invisible or format characters"),  # BOM
        ("al\u00adice", "contains invisible or format characters"),  # soft hyphen
        ("alice\U000e0041", "contains invisible or format characters"),  # tag character
        ("alice\ufe0f", "contains invisible or format characters"),  # variation selector (Mn)
        ("alice\u034f", "contains invisible or format characters"),  # combining grapheme joiner (Mn)
        ("\u3164", "contains invisible or format characters"),  # Hangul filler (Lo)
        ("alice\u2028", "contains line or paragraph separators"),
        ("alice\u2029bob", "contains line or paragraph separators"),
        ("alice\ue000", "contains private-use, surrogate or unassigned code points"),
        ("alice\ud800", "contains private-use, surrogate or unassigned code points"),
        ("alice\u0378", "contains private-use, surrogate or unassigned code points"),  # unassigned
        ("alice\u00a0bob", "contains spaces other than U+0020"),  # no-break space
        ("alice\u3000", "contains spaces other than U+0020"),  # ideographic space
        ("alice ", "has leading or trailing spaces"),
        (" alice", "has leading or trailing spaces"),
        ("e\u0301", "is not in Unicode NFC form"),  # é decomposed: "é" is the one spelling
        ("\u212b", "is not in Unicode NFC form"),  # the angstrom sign, canonically Å
    ],
)
def test_a_subject_that_could_be_spelled_two_ways_or_hides_characters_is_refused(subject: object, reason: str) -> None:
    assert subject_problem(subject) == reason


def test_a_refusal_reason_is_short_ascii_without_quotes() -> None:
    # It goes into a WWW-Authenticate quoted-string (RFC 6750 §3).
    for subject in ["a\u202e", "a\u2028", "a\ue000", "a\u00a0b", "a ", "e\u0301", "x" * 200, "a\n"]:
        reason = subject_problem(subject)
        assert reason is not None and reason.isascii() and '"' not in reason and "\\" not in reason
