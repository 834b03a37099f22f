"""Failure paths of the engine: each error code from its cause, and base weights untouched after each.

CUDA_OOM and the generic pipeline failure cannot be produced on demand on a CPU, so they are injected
into the real UNet's forward pass with a hook (named for what it injects). Everything else is real.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from contracts.errors import WorkerErrorCode
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.errors import WorkerFailure
from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.serve.bootstrap import build_engine
from gpu.serve.settings import WorkerSettings
from tests.support.engine import error_of, png_of, request, tiny_engine
from tests.support.file_server import FileServer


@contextmanager
def unet_raises(engine: SdxlLoraEngine, error: BaseException) -> Iterator[None]:
    """Fault injection: the UNet's forward raises `error` (as a GPU would on OOM)."""

    def hook(*_: object) -> None:
        raise error

    handle = engine.pipeline.unet.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def lora_url(file_server: FileServer, lora_files: dict[str, Path]) -> str:
    return file_server.add("/a.safetensors", lora_files["a"].read_bytes())


@pytest.mark.parametrize(
    ("injected", "code"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), WorkerErrorCode.CUDA_OOM),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), WorkerErrorCode.GENERATION_FAILED),
    ],
)
def test_pipeline_failures_map_to_their_codes_and_leave_weights_intact(
    tiny_model_dir: Path, lora_url: str, injected: BaseException, code: WorkerErrorCode
) -> None:
    engine = tiny_engine(tiny_model_dir)
    before = fingerprint_pipeline(engine.pipeline)
    reference = png_of(engine.generate(request(lora_url=lora_url)))
    with unet_raises(engine, injected):
        error = error_of(engine.generate(request(lora_url=lora_url)))
    assert error.error_code == code
    assert fingerprint_pipeline(engine.pipeline) == before
    assert png_of(engine.generate(request(lora_url=lora_url))) == reference


def test_time_budget_spent_in_denoising_is_timeout(tiny_model_dir: Path, lora_url: str) -> None:
    engine = tiny_engine(tiny_model_dir)
    before = fingerprint_pipeline(engine.pipeline)
    engine.generate(request(lora_url=lora_url))  # cache the LoRA so the budget runs out in denoising
    error = error_of(engine.generate(request(lora_url=lora_url, steps=100, width=256, height=256, timeout_seconds=0.3)))
    assert error.error_code == WorkerErrorCode.TIMEOUT and error.retryable is True
    assert fingerprint_pipeline(engine.pipeline) == before


def test_download_failure_leaves_weights_intact(tiny_model_dir: Path, file_server: FileServer) -> None:
    engine = tiny_engine(tiny_model_dir)
    before = fingerprint_pipeline(engine.pipeline)
    error = error_of(engine.generate(request(lora_url=file_server.url("/missing.safetensors"))))
    assert error.error_code == WorkerErrorCode.LORA_DOWNLOAD_FAILED
    assert fingerprint_pipeline(engine.pipeline) == before


def test_missing_model_directory_is_model_load_failed(tmp_path: Path) -> None:
    with pytest.raises(WorkerFailure) as caught:
        build_engine(WorkerSettings(MODEL_DIR=tmp_path / "nothing-here", WORKER_DEVICE="cpu"))
    assert caught.value.code == WorkerErrorCode.MODEL_LOAD_FAILED


def test_corrupt_model_weights_are_model_load_failed(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WorkerFailure) as caught:
        build_engine(WorkerSettings(MODEL_DIR=broken, WORKER_DEVICE="cpu"))
    assert caught.value.code == WorkerErrorCode.MODEL_LOAD_FAILED
    assert "unet" in str(caught.value.details) or "reason" in caught.value.details


def test_failure_in_the_middle_of_fusing_restores_what_was_touched(
    tiny_model_dir: Path, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the 10th layer's delta cannot be applied (a corrupted cached plan)."""
    from gpu.engine.lora.plan import LayerDelta, LoraPlan

    engine = tiny_engine(tiny_model_dir)
    before = fingerprint_pipeline(engine.pipeline)
    real_plan = engine.plan_lora

    def corrupted_plan(tensors: dict[str, torch.Tensor]) -> LoraPlan:
        plan = real_plan(tensors)
        bad = plan.deltas[9]
        broken = LayerDelta(bad.component, bad.module_path, bad.down, bad.up[:1], bad.alpha_scale)
        return LoraPlan((*plan.deltas[:9], broken, *plan.deltas[10:]))

    monkeypatch.setattr(engine, "plan_lora", corrupted_plan)
    error = error_of(engine.generate(request(lora_url=lora_url)))
    assert error.error_code == WorkerErrorCode.GENERATION_FAILED
    assert fingerprint_pipeline(engine.pipeline) == before
    assert engine.poisoned is None


def test_a_restore_that_fails_retires_the_worker(
    tiny_model_dir: Path, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: restoring the base weights raises; the worker must stop serving, not serve altered weights."""
    engine = tiny_engine(tiny_model_dir)

    def broken_restore() -> list[str]:
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.fuser, "restore", broken_restore)
    engine.generate(request(lora_url=lora_url))
    assert engine.poisoned is not None
    error = error_of(engine.generate(request()))
    assert error.error_code == WorkerErrorCode.MODEL_LOAD_FAILED and "retired" in error.error
