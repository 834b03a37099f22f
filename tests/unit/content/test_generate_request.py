"""The generate request takes the worker contract's bounds and defaults, and refuses what cannot be stored."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from contracts.worker import MAX_SEED, WorkerRequest
from services.content.schemas import GenerateRequest


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
        ("width", 1001),
        ("width", 32),
        ("height", 4096),
        ("steps", 0),
        ("steps", 101),
        ("cfg", -1),
        ("seed", -1),
        ("seed", MAX_SEED + 1),
        ("lora_scale", 2.5),
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * 2001),
        ("prompt", "a\x00b"),
        ("negative_prompt", "a\x00b"),
    ],
)
def test_values_the_worker_would_refuse_are_refused(field: str, value: object) -> None:
    body = {"avatar_id": str(uuid.uuid4()), "prompt": "a portrait", field: value}
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate(body)
    assert [e["loc"][0] for e in caught.value.errors()] == [field]


def test_the_largest_seed_is_accepted() -> None:
    assert GenerateRequest(avatar_id=uuid.uuid4(), prompt="x", seed=MAX_SEED).seed == MAX_SEED


def test_unknown_fields_are_refused_so_a_typo_is_not_silently_ignored() -> None:
    with pytest.raises(ValidationError, match="negative_promt"):
        GenerateRequest.model_validate({"avatar_id": str(uuid.uuid4()), "prompt": "x", "negative_promt": "y"})
