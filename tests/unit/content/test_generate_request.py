"""The generate request: the worker contract's bounds and defaults, JSON numbers only, clean text, no stray fields."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from contracts.worker import MAX_SEED, WorkerRequest
from services.content.schemas import GenerateRequest


def _body(**fields: Any) -> dict[str, Any]:
    return {"avatar_id": str(uuid.uuid4()), "prompt": "a portrait", **fields}


def _refused_fields(body: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate(body)
    return [error["loc"][0] for error in caught.value.errors()]


def test_defaults_are_the_worker_contracts() -> None:
    request = GenerateRequest(avatar_id=uuid.uuid4(), prompt="a portrait")
    worker = WorkerRequest(prompt="a portrait")

    assert (request.width, request.height, request.steps, request.cfg, request.negative_prompt) == (
        worker.width,
        worker.height,
        worker.steps,
        worker.cfg,
        worker.negative_prompt,
    )
    assert request.seed is None and request.lora_scale is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 1001),  # not a multiple of 8
        ("width", 32),
        ("height", 4096),
        ("steps", 0),
        ("steps", 101),
        ("cfg", -1),
        ("cfg", 30.5),
        ("seed", -1),
        ("seed", MAX_SEED + 1),
        ("lora_scale", 2.5),
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", " \n "),
        ("prompt", "x" * 2001),
        ("prompt", "a\x00b"),
        ("prompt", "a\x1b[31mred"),
        ("prompt", "a\tb"),
        ("prompt", "a\r\nb"),
        ("prompt", "a\x85b"),  # C1 control (NEL)
        ("negative_prompt", "a\x00b"),
        ("negative_prompt", "a\x1bb"),
        ("negative_prompt", "x" * 2001),
    ],
)
def test_values_the_worker_would_refuse_are_refused(field: str, value: object) -> None:
    assert _refused_fields(_body(**{field: value})) == [field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cfg", "0.5"),
        ("lora_scale", "0.5"),
        ("width", "512"),
        ("height", "512"),
        ("steps", "20"),
        ("seed", "7"),
        ("steps", True),
        ("width", True),
        ("seed", False),
        ("cfg", True),
        ("width", 512.5),
        ("steps", 20.5),
    ],
)
def test_numbers_must_be_json_numbers_of_the_right_kind(field: str, value: object) -> None:
    assert _refused_fields(_body(**{field: value})) == [field]


def test_a_whole_float_is_taken_as_an_integer() -> None:
    request = GenerateRequest.model_validate(_body(width=512.0, height=768.0, steps=20.0, seed=7.0))

    assert (request.width, request.height, request.steps, request.seed) == (512, 768, 20, 7)
    assert all(type(value) is int for value in (request.width, request.height, request.steps, request.seed))


def test_an_integer_is_taken_for_a_float() -> None:
    request = GenerateRequest.model_validate(_body(cfg=7, lora_scale=1))

    assert (request.cfg, request.lora_scale) == (7.0, 1.0)


@pytest.mark.parametrize("seed", [0, MAX_SEED])
def test_the_seed_bounds_are_accepted(seed: int) -> None:
    assert GenerateRequest.model_validate(_body(seed=seed)).seed == seed


def test_the_largest_prompt_and_a_line_break_are_accepted() -> None:
    assert len(GenerateRequest.model_validate(_body(prompt="x" * 2000)).prompt) == 2000
    request = GenerateRequest.model_validate(_body(prompt="line one\nline two", negative_prompt="blurry\nlow"))
    assert (request.prompt, request.negative_prompt) == ("line one\nline two", "blurry\nlow")


def test_text_is_nfc_normalised() -> None:
    decomposed = "cafe\u0301 portrait"  # e + combining acute
    request = GenerateRequest.model_validate(_body(prompt=decomposed, negative_prompt=decomposed))

    composed = unicodedata.normalize("NFC", decomposed)
    assert request.prompt == composed == "caf\u00e9 portrait"
    assert request.negative_prompt == composed


def test_unknown_fields_are_refused_so_a_typo_is_not_silently_ignored() -> None:
    with pytest.raises(ValidationError, match="negative_promt"):
        GenerateRequest.model_validate(_body(negative_promt="y"))


def test_the_avatar_id_must_be_a_uuid() -> None:
    assert _refused_fields(_body(avatar_id="not-a-uuid")) == ["avatar_id"]


def test_a_long_prompt_is_refused_saying_the_limit() -> None:
    with pytest.raises(ValidationError, match="at most 2000 characters"):
        GenerateRequest.model_validate(_body(prompt="x" * 2001))
