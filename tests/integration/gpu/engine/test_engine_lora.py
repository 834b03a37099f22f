"""The real tiny SDXL pipeline with real LoRA files served over loopback HTTP."""

import hashlib
from pathlib import Path

import pytest

from contracts.errors import WorkerErrorCode
from gpu.engine.fingerprint import fingerprint_pipeline
from tests.support.engine import error_of, image_size, png_of, request, tiny_engine
from tests.support.file_server import FileServer


@pytest.fixture
def served(file_server: FileServer, lora_files: dict[str, Path]) -> dict[str, str]:
    return {name: file_server.add(f"/loras/{name}.safetensors", path.read_bytes()) for name, path in lora_files.items()}


def test_image_depends_on_lora_and_scale_and_repeats_exactly(tiny_model_dir: Path, served: dict[str, str]) -> None:
    engine = tiny_engine(tiny_model_dir)
    before = fingerprint_pipeline(engine.pipeline)

    base = png_of(engine.generate(request()))
    with_a = png_of(engine.generate(request(lora_url=served["a"], lora_scale=1.0)))
    with_a_again = png_of(engine.generate(request(lora_url=served["a"], lora_scale=1.0)))
    with_a_half = png_of(engine.generate(request(lora_url=served["a"], lora_scale=0.5)))
    with_b = png_of(engine.generate(request(lora_url=served["b"], lora_scale=1.0)))
    base_again = png_of(engine.generate(request()))

    assert image_size(base) == (64, 64)
    assert with_a != base, "the LoRA changed nothing"
    assert with_a_half not in (base, with_a), "the scale changed nothing"
    assert with_b not in (base, with_a)
    assert with_a_again == with_a
    assert base_again == base
    assert fingerprint_pipeline(engine.pipeline) == before


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_then_b_then_none_then_a_gives_the_first_image_again(
    tiny_model_dir: Path, served: dict[str, str], dtype: str
) -> None:
    # bfloat16 is where unfusing by subtraction leaves residue; restoring from pristine copies does not.
    engine = tiny_engine(tiny_model_dir, WORKER_DTYPE=dtype)
    before = fingerprint_pipeline(engine.pipeline)
    first = png_of(engine.generate(request(lora_url=served["a"])))
    engine.generate(request(lora_url=served["b"]))
    engine.generate(request())
    last = png_of(engine.generate(request(lora_url=served["a"])))
    assert last == first
    assert fingerprint_pipeline(engine.pipeline) == before


def test_success_reports_model_info_timings_and_sha(
    tiny_model_dir: Path, served: dict[str, str], lora_files: dict[str, Path]
) -> None:
    engine = tiny_engine(tiny_model_dir)
    outcome = engine.generate(request(lora_url=served["a"], lora_scale=0.8, request_id="r-1", width=96, height=64))
    png = png_of(outcome)
    assert image_size(png) == (96, 64)
    assert outcome.model_info.lora_applied and outcome.model_info.lora_scale == 0.8  # type: ignore[union-attr]
    assert outcome.request_id == "r-1"  # type: ignore[union-attr]
    assert outcome.lora_sha256 == hashlib.sha256(lora_files["a"].read_bytes()).hexdigest()  # type: ignore[union-attr]
    timings = outcome.timings  # type: ignore[union-attr]
    assert timings is not None and timings.lora_source == "download"
    assert timings.download_ms > 0 and timings.load_ms > 0 and timings.denoise_ms > 0 and timings.restore_ms > 0


def test_second_request_for_a_lora_does_not_download_it_again(
    tiny_model_dir: Path, served: dict[str, str], file_server: FileServer, tmp_path: Path
) -> None:
    engine = tiny_engine(tiny_model_dir, cache_dir=tmp_path / "lora-cache")
    # Different signatures, same object: the cache keys on the URL without its query.
    first = engine.generate(request(lora_url=served["a"] + "?X-Amz-Signature=one"))
    second = engine.generate(request(lora_url=served["a"] + "?X-Amz-Signature=two"))
    assert file_server.requests["/loras/a.safetensors"] == 1
    assert first.timings.lora_source == "download"  # type: ignore[union-attr]
    assert second.timings.lora_source == "memory_cache"  # type: ignore[union-attr]

    # A fresh worker (a new container on the same Volume) finds it on disk.
    fresh = tiny_engine(tiny_model_dir, cache_dir=tmp_path / "lora-cache")
    third = fresh.generate(request(lora_url=served["a"] + "?X-Amz-Signature=three"))
    assert third.timings.lora_source == "disk_cache"  # type: ignore[union-attr]
    assert file_server.requests["/loras/a.safetensors"] == 1
    assert png_of(third) == png_of(first)


def test_sha256_mismatch_is_a_download_failure(tiny_model_dir: Path, served: dict[str, str]) -> None:
    engine = tiny_engine(tiny_model_dir)
    error = error_of(engine.generate(request(lora_url=served["a"], lora_sha256="0" * 64)))
    assert error.error_code == WorkerErrorCode.LORA_DOWNLOAD_FAILED
    assert "sha256" in error.error


def test_a_refused_file_is_not_cached(tiny_model_dir: Path, file_server: FileServer, tmp_path: Path) -> None:
    engine = tiny_engine(tiny_model_dir, cache_dir=tmp_path / "cache")
    url = file_server.add("/bad.safetensors", b"not a lora at all")
    for _ in range(2):
        assert error_of(engine.generate(request(lora_url=url))).error_code == WorkerErrorCode.LORA_LOAD_FAILED
    assert file_server.requests["/bad.safetensors"] == 2
    assert not list((tmp_path / "cache").glob("*.safetensors"))
