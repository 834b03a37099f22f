"""Identity request bodies: the event contract's bounds, and text a database can store."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from services.identity.schemas import AvatarCreate, LoraCreate


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "nul\x00byte"])
def test_an_avatar_name_must_be_1_to_100_storable_non_blank_characters(name: str) -> None:
    with pytest.raises(ValidationError):
        AvatarCreate(owner_id=uuid.uuid4(), name=name)


def test_a_lora_registration_has_the_documented_defaults() -> None:
    body = LoraCreate()
    assert (body.default_scale, body.trigger_words, body.base_model, body.size_bytes) == (
        1.0,
        [],
        "sdxl-base-1.0",
        None,
    )


@pytest.mark.parametrize(
    "fields", [{"default_scale": -0.1}, {"default_scale": 2.01}, {"size_bytes": 0}, {"trigger_words": [""]}, {"x": 1}]
)
def test_a_lora_registration_out_of_bounds_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LoraCreate.model_validate(fields)
