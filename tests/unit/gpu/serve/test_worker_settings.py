"""Worker settings that parse text: warm-up sizes are WIDTHxHEIGHT lists the contract would accept, or a clear error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpu.serve.settings import WorkerSettings


@pytest.mark.parametrize(
    ("raw", "sizes"),
    [("", []), ("1024x1024", [(1024, 1024)]), (" 832X1216 , 64x64,", [(832, 1216), (64, 64)])],
)
def test_warm_up_sizes_parse(raw: str, sizes: list[tuple[int, int]]) -> None:
    assert WorkerSettings(WORKER_WARMUP_SIZES=raw).warmup_sizes == sizes


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("1024", "is not WIDTHxHEIGHT"),
        ("1024x", "is not WIDTHxHEIGHT"),
        ("axb", "is not WIDTHxHEIGHT"),
        ("1004x1024", "multiples of 8"),
        ("4096x4096", "within 64..2048"),
    ],
)
def test_bad_warm_up_sizes_are_refused_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSettings(WORKER_WARMUP_SIZES=raw)
    assert "WORKER_WARMUP_SIZES" in str(caught.value) and reason in str(caught.value)


def test_the_size_bounds_are_the_worker_contracts() -> None:
    from contracts.worker import WorkerRequest
    from gpu.serve.image_sizes import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

    WorkerRequest(prompt="x", width=MIN_SIDE, height=MAX_SIDE)
    for width in (MIN_SIDE - SIDE_MULTIPLE, MAX_SIDE + SIDE_MULTIPLE, MIN_SIDE + SIDE_MULTIPLE // 2):
        with pytest.raises(ValidationError):
            WorkerRequest(prompt="x", width=width, height=MIN_SIDE)
