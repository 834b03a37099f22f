"""Properties of content's submit schema: numbers only as JSON numbers, unknown fields refused, prompts non-blank,
bounded, free of control characters (line breaks aside) and stored in one Unicode spelling (NFC)."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.content.schemas import GenerateRequest
from tests.support.properties import bounded

BASE: dict[str, Any] = {"avatar_id": str(uuid.UUID(int=1)), "prompt": "a cat"}
NUMBER_FIELDS = ("width", "height", "steps", "cfg", "seed", "lora_scale")
# A control character the prompt rules refuse: C0 (but the line break), DEL and C1.
refused_controls = st.sampled_from([chr(c) for c in [*range(0x0A), *range(0x0B, 0x20), *range(0x7F, 0xA0)]])
# Printable text, line breaks allowed (what a prompt may hold).
prompt_text = st.text(st.characters(exclude_categories=["Cc", "Cs"], include_characters="\n"), max_size=300)


def refused_fields(body: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as refusal:
        GenerateRequest.model_validate(body)
    return {str(error["loc"][0]) for error in refusal.value.errors()}


@bounded()
@given(field=st.sampled_from(NUMBER_FIELDS), value=st.integers(1, 100) | st.booleans())
def test_numbers_spelled_as_strings_or_booleans_are_refused(field: str, value: int | bool) -> None:
    # Guards: lax coercion ("8" or true read as a number) that a typed client never sends and the schema forbids.
    spelled = str(value) if not isinstance(value, bool) else value
    assert refused_fields({**BASE, field: spelled}) == {field}


@bounded()
@given(name=st.text(min_size=1, max_size=20).filter(lambda n: n not in GenerateRequest.model_fields))
def test_unknown_fields_are_refused(name: str) -> None:
    # Guards: a misspelt field (`step` for `steps`) silently ignored and the request run with the default.
    assert refused_fields({**BASE, name: 1}) == {name}


@bounded()
@given(prompt=prompt_text.filter(lambda p: p.strip() != "" and len(p) <= 2000))
def test_a_printable_prompt_is_accepted_in_its_nfc_spelling(prompt: str) -> None:
    # Guards: a valid prompt refused, or two spellings of one text producing two different requests (digests).
    accepted = GenerateRequest.model_validate({**BASE, "prompt": prompt})
    assert accepted.prompt == unicodedata.normalize("NFC", prompt)


@bounded()
@given(before=prompt_text, control=refused_controls, after=prompt_text)
def test_a_control_character_anywhere_in_a_prompt_is_refused(before: str, control: str, after: str) -> None:
    # Guards: NUL (which PostgreSQL cannot store: a 500) or an escape sequence reaching the database and the logs.
    for field in ("prompt", "negative_prompt"):
        assert refused_fields({**BASE, field: f"x{before}{control}{after}"}) == {field}


@bounded(100)
@given(blank=st.text(st.sampled_from(" \n\u00a0\u2003\u3000"), max_size=20))
def test_a_blank_prompt_is_refused(blank: str) -> None:
    # Guards: a generation run for an empty prompt (whitespace of any kind counts as empty).
    assert refused_fields({**BASE, "prompt": blank}) == {"prompt"}


@bounded(50)
@given(extra=st.integers(1, 500))
def test_a_prompt_over_2000_characters_is_refused(extra: int) -> None:
    # Guards: an unbounded prompt (event, row and worker call of any size).
    assert refused_fields({**BASE, "prompt": "a" * (2000 + extra)}) == {"prompt"}


@bounded()
@given(field=st.sampled_from(["width", "height"]), side=st.integers(8, 2048).filter(lambda n: n % 8 != 0))
def test_sides_must_be_multiples_of_8(field: str, side: int) -> None:
    # Guards: a size the SDXL latent grid cannot hold sent to the GPU (the worker would fail after queuing).
    assert refused_fields({**BASE, field: side}) == {field}
