"""Identity request bodies: the event contract's bounds, strict types, and text rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.identity.schemas import AvatarCreate, LoraCreate


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "nul\x00byte", "two\nlines", "del\x7f"])
def test_an_avatar_name_must_be_1_to_100_visible_characters_on_one_line(name: str) -> None:
    with pytest.raises(ValidationError):
        AvatarCreate(name=name)


def test_a_lora_registration_has_the_documented_defaults() -> None:
    body = LoraCreate(size_bytes=10)
    assert (body.default_scale, body.trigger_words, body.base_model, body.activate) == (
        1.0,
        [],
        "sdxl-base-1.0",
        True,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"size_bytes": 0},
        {"size_bytes": "10"},
        {"size_bytes": 10, "default_scale": -0.1},
        {"size_bytes": 10, "default_scale": 2.01},
        {"size_bytes": 10, "default_scale": "1"},
        {"size_bytes": 10, "trigger_words": [""]},
        {"size_bytes": 10, "x": 1},
    ],
)
def test_a_lora_registration_out_of_bounds_or_of_the_wrong_type_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LoraCreate.model_validate(fields)
