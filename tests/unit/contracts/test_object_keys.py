"""Object keys are derived from ids and hashes, and a key that is not the derivation is named as such."""

from __future__ import annotations

import uuid

import pytest

from contracts.object_keys import (
    UnderivableKeyError,
    canonical_generation_id,
    generation_image_key,
    image_key_problem,
    lora_key_problem,
    lora_object_key,
)

GENERATION = uuid.UUID("0b7c7d8e-1f2a-4b3c-8d4e-5f6a7b8c9d0e")
SHA = "ab" * 32


def test_keys_are_derived_from_the_id_and_the_hash() -> None:
    assert generation_image_key(GENERATION) == generation_image_key(str(GENERATION))
    assert generation_image_key(GENERATION) == f"generations/{GENERATION}.png"
    assert lora_object_key(SHA) == f"loras/sha256/{SHA}.safetensors"


@pytest.mark.parametrize(
    "generation_id",
    ["gen-1", "../../loras/x", str(GENERATION).upper(), GENERATION.hex, f"{{{GENERATION}}}", f"{GENERATION}\n", ""],
)
def test_an_id_content_never_issues_names_no_image(generation_id: str) -> None:
    with pytest.raises(UnderivableKeyError):
        canonical_generation_id(generation_id)
    assert image_key_problem(f"generations/{generation_id}.png", generation_id) is not None


@pytest.mark.parametrize("sha256", ["AB" * 32, "ab" * 31, "zz" * 32, "../" * 21 + "a", ""])
def test_a_hash_that_is_not_a_sha256_names_no_lora(sha256: str) -> None:
    with pytest.raises(UnderivableKeyError):
        lora_object_key(sha256)


@pytest.mark.parametrize(
    "key",
    [
        f"uploads/loras/a/{SHA}.safetensors",
        f"loras/sha256/{'cd' * 32}.safetensors",
        f"generations/{GENERATION}.png",
        f"loras/sha256/{SHA}.safetensors/../x",
        f"LORAS/SHA256/{SHA}.safetensors",
    ],
)
def test_a_lora_key_must_be_the_content_address_of_its_own_hash(key: str) -> None:
    problem = lora_key_problem(key, SHA)
    assert problem is not None and lora_object_key(SHA) in problem
    assert lora_key_problem(lora_object_key(SHA), SHA) is None


def test_an_image_key_must_be_the_generations_own() -> None:
    other = uuid.uuid4()
    assert image_key_problem(generation_image_key(GENERATION), GENERATION) is None
    assert image_key_problem(generation_image_key(other), GENERATION) is not None
    assert image_key_problem(lora_object_key(SHA), str(GENERATION)) is not None
