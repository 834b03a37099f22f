"""An interruption (a BaseException raised at any line, as Modal's `InputCancellation` is by its SIGUSR1 handler)
in the middle of a request, or in the middle of restoring the base weights, never leaves them altered.

The interruption is injected where a signal could land: `InterruptedCopy` stands in for the fuser's copy of a batch
of layers and raises `InputCancellation` before or after copying the k-th batch back; a UNet hook raises it
mid-denoise. The engine here copies back 3 layers per batch (a worker does up to 1,024 in one foreach call), so
that an interruption can land between batches as well as before the first and after the last.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from modal.exception import InputCancellation
from safetensors.torch import load_file

from contracts.errors import WorkerErrorCode
from gpu.engine.engine import RESTORE_STALLED_ATTEMPTS, SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.engine.lora.fuser import LoraFuser
from tests.support.engine import error_of, png_of, request, tiny_engine
from tests.support.file_server import FileServer

RESTORE_BATCH = 3


class InterruptedCopy:
    """Fault injection: the fuser's copy of a batch of layers back to their originals is interrupted by
    InputCancellation, at the k-th batch (0-based), before or after the copy, `times` times (None: every time
    from then on)."""

    def __init__(self, fuser: LoraFuser, k: int, after_copy: bool = False, times: int | None = 1) -> None:
        self.real = fuser._copy_back
        self.k, self.after_copy, self.times = k, after_copy, times
        self.calls = 0
        self.raised = 0

    def _interrupt(self) -> None:
        if self.calls - 1 >= self.k and (self.times is None or self.raised < self.times):
            self.raised += 1
            raise InputCancellation(f"interrupted at batch {self.calls - 1}")

    def __call__(self, keys: list[tuple[str, str]]) -> None:
        self.calls += 1
        if not self.after_copy:
            self._interrupt()
        self.real(keys)
        if self.after_copy:
            self._interrupt()


@contextmanager
def unet_interrupted(engine: SdxlLoraEngine) -> Iterator[None]:
    """Fault injection: the UNet's forward is interrupted by InputCancellation (a cancel landing mid-denoise)."""

    def hook(*_: object) -> None:
        raise InputCancellation("Input was cancelled by user")

    handle = engine.pipeline.unet.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> SdxlLoraEngine:
    engine = tiny_engine(tiny_model_dir)
    engine.fuser.restore_batch = RESTORE_BATCH
    return engine


@pytest.fixture
def lora_url(file_server: FileServer, lora_files: dict[str, Path]) -> str:
    return file_server.add("/a.safetensors", lora_files["a"].read_bytes())


def fused_layers(engine: SdxlLoraEngine, lora_files: dict[str, Path]) -> int:
    plan = engine.plan_lora(load_file(lora_files["a"]))
    return engine.fuser.fuse(plan, 1.0)


@pytest.mark.parametrize("after_copy", [False, True], ids=["before-copy", "after-copy"])
@pytest.mark.parametrize("where", ["first", "second", "middle", "last"])
def test_a_restore_interrupted_after_k_layers_is_finished_by_the_next_restore(
    engine: SdxlLoraEngine, lora_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, where: str, after_copy: bool
) -> None:
    before = fingerprint_pipeline(engine.pipeline)
    layers = fused_layers(engine, lora_files)
    batches = -(-layers // RESTORE_BATCH)
    assert batches > 4 and fingerprint_pipeline(engine.pipeline) != before
    k = {"first": 0, "second": 1, "middle": batches // 2, "last": batches - 1}[where]
    interrupted = InterruptedCopy(engine.fuser, k, after_copy)
    monkeypatch.setattr(engine.fuser, "_copy_back", interrupted)

    with pytest.raises(InputCancellation):
        engine.fuser.restore()
    assert interrupted.raised == 1
    pending_after_interruption = len(engine.fuser.pending)

    assert engine.fuser.restore() == []
    assert fingerprint_pipeline(engine.pipeline) == before
    assert engine.fuser.pending == []
    # Nothing was forgotten: the k-th batch (copied or not) and every one after it had stayed pending.
    assert pending_after_interruption == layers - k * RESTORE_BATCH


def test_a_restore_interrupted_in_its_comparison_is_verified_by_the_next_one(
    engine: SdxlLoraEngine, lora_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the comparison (after every layer was copied back) is interrupted at its third layer."""
    before = fingerprint_pipeline(engine.pipeline)
    fused_layers(engine, lora_files)
    real_equal, calls = torch.equal, [0]

    def interrupted_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
        calls[0] += 1
        if calls[0] == 3:
            raise InputCancellation("interrupted while comparing")
        return real_equal(a, b)

    monkeypatch.setattr(torch, "equal", interrupted_equal)
    with pytest.raises(InputCancellation):
        engine.fuser.restore()
    monkeypatch.setattr(torch, "equal", real_equal)
    # A layer altered behind the fuser's back is still caught by the comparison the second restore finishes.
    key = engine.fuser._unverified[-1]
    original = engine.fuser._weight(*key).clone()
    with torch.no_grad():
        engine.fuser._weight(*key).add_(1.0)
    assert engine.fuser.restore() == [f"{key[0]}.{key[1]}"]
    with torch.no_grad():
        engine.fuser._weight(*key).copy_(original)
    assert fingerprint_pipeline(engine.pipeline) == before


def test_a_request_interrupted_mid_denoise_restores_the_weights_and_raises(
    engine: SdxlLoraEngine, lora_url: str
) -> None:
    before = fingerprint_pipeline(engine.pipeline)
    reference = png_of(engine.generate(request(lora_url=lora_url)))
    with unet_interrupted(engine), pytest.raises(InputCancellation):
        engine.generate(request(lora_url=lora_url))
    assert fingerprint_pipeline(engine.pipeline) == before
    assert engine.poisoned is None and engine.fuser.pending == []
    assert png_of(engine.generate(request(lora_url=lora_url))) == reference


@pytest.mark.parametrize("after_copy", [False, True], ids=["before-copy", "after-copy"])
def test_a_second_interruption_during_the_restore_does_not_skip_it(
    engine: SdxlLoraEngine, lora_url: str, monkeypatch: pytest.MonkeyPatch, after_copy: bool
) -> None:
    """The cancel lands mid-denoise, a second one while the weights are being restored (the review's case)."""
    before = fingerprint_pipeline(engine.pipeline)
    reference = png_of(engine.generate(request(lora_url=lora_url)))
    interrupted = InterruptedCopy(engine.fuser, k=3, after_copy=after_copy, times=2)
    monkeypatch.setattr(engine.fuser, "_copy_back", interrupted)
    with unet_interrupted(engine), pytest.raises(InputCancellation) as caught:
        engine.generate(request(lora_url=lora_url))
    # The restore's interruption goes on once the restore is done, with the one that stopped the request in its chain.
    assert str(caught.value) == "interrupted at batch 3"
    assert str(caught.value.__context__) == "Input was cancelled by user"
    assert interrupted.raised == 2
    assert fingerprint_pipeline(engine.pipeline) == before
    assert engine.poisoned is None and engine.fuser.pending == []
    monkeypatch.undo()
    assert png_of(engine.generate(request(lora_url=lora_url))) == reference


def test_a_restore_interrupted_over_and_over_retires_the_worker(
    tiny_model_dir: Path, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engine(tiny_model_dir)
    engine.fuser.restore_batch = RESTORE_BATCH
    interrupted = InterruptedCopy(engine.fuser, k=0, times=None)
    monkeypatch.setattr(engine.fuser, "_copy_back", interrupted)
    with pytest.raises(InputCancellation):
        engine.generate(request(lora_url=lora_url))
    assert interrupted.raised == RESTORE_STALLED_ATTEMPTS
    assert engine.poisoned is not None and "interrupted" in engine.poisoned
    monkeypatch.undo()
    error = error_of(engine.generate(request()))
    assert error.error_code == WorkerErrorCode.MODEL_LOAD_FAILED and "retired" in error.error


def test_layers_left_fused_by_an_escaped_interruption_are_restored_before_the_next_request(
    engine: SdxlLoraEngine, lora_files: dict[str, Path]
) -> None:
    """An interruption that escaped before the restore began (it can land on any line) left a LoRA fused: the next
    request, even one without a LoRA, restores the base weights before it runs."""
    before = fingerprint_pipeline(engine.pipeline)
    reference = png_of(engine.generate(request()))
    fused_layers(engine, lora_files)
    assert png_of(engine.generate(request())) == reference
    assert fingerprint_pipeline(engine.pipeline) == before and engine.poisoned is None
