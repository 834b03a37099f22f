"""The swap's code path on a real engine: a cached LoRA is resolved once across requests (the pipeline's own runs
change nothing under it), moving the engine drops what was resolved, and swaps leave no memory behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gpu.engine.lora.resolved as resolved_module
from gpu.bench.memory import heap_bytes_in_use
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.plan import LoraPlan
from gpu.engine.lora.resolved import ResolvedGroup
from tests.support.engine import png_of, request, tiny_engine
from tests.support.file_server import FileServer

# Heap growth allowed over the measured swaps: malloc's own bookkeeping moves by a few KiB (+0.01 MiB over the soak's
# 1,000 requests); a fuser keeping one swap's updates grows it by ~1.5 MiB a swap (the soak's leaking variant: 153 MiB
# over 100 requests).
HEAP_SLACK_BYTES = 64 * 1024


@pytest.fixture
def engine(tiny_model_dir: Path) -> SdxlLoraEngine:
    return tiny_engine(tiny_model_dir)


def test_a_cached_lora_is_resolved_once_across_requests(
    engine: SdxlLoraEngine, file_server: FileServer, lora_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    walks = [0]
    real = resolved_module.module_path

    def counting(root: torch.nn.Module, path: str) -> list[torch.nn.Module]:
        walks[0] += 1
        return real(root, path)

    monkeypatch.setattr(resolved_module, "module_path", counting)
    url = file_server.add("/a.safetensors", lora_files["a"].read_bytes())
    first = png_of(engine.generate(request(lora_url=url)))
    layers, generation = walks[0], resolved_module.structure_generation()
    assert layers > 0
    for _ in range(3):
        assert png_of(engine.generate(request(lora_url=url))) == first
    assert walks[0] == layers and resolved_module.structure_generation() == generation


def test_moving_the_engine_forgets_resolutions_and_originals(
    engine: SdxlLoraEngine, file_server: FileServer, lora_files: dict[str, Path]
) -> None:
    url = file_server.add("/a.safetensors", lora_files["a"].read_bytes())
    before = fingerprint_pipeline(engine.pipeline)
    first = png_of(engine.generate(request(lora_url=url)))
    assert engine.fuser.pristine_bytes > 0 and engine.fuser.resolved_plans == 1
    engine.to("cpu")
    assert engine.fuser.pristine_bytes == 0 and engine.fuser.resolved_plans == 0
    assert png_of(engine.generate(request(lora_url=url))) == first
    assert fingerprint_pipeline(engine.pipeline) == before


class LeakingFuser(LoraFuser):
    """Fault injection: a fuser that keeps every update it computed (the kind of leak the probe must see)."""

    kept: list[torch.Tensor]

    def _add(self, resolved: ResolvedGroup, scale: float) -> None:
        self.kept = getattr(self, "kept", [])
        self.kept.append(resolved.group.updates(scale, resolved.weights[0].device))
        super()._add(resolved, scale)


def heap_growth_over_swaps(fuser: LoraFuser, plans: list[LoraPlan], swaps: int) -> int:
    for plan in plans:  # warm: pristine copies, resolutions
        fuser.fuse(plan, 1.0)
        fuser.restore()
    before = heap_bytes_in_use()
    assert before is not None
    for index in range(swaps):
        fuser.fuse(plans[index % len(plans)], 0.5 + 0.25 * (index % 3))
        assert fuser.restore() == []
    after = heap_bytes_in_use()
    assert after is not None
    return after - before


@pytest.mark.skipif(heap_bytes_in_use() is None, reason="needs glibc's mallinfo2")
@pytest.mark.parametrize(("fuser_class", "leaks"), [(LoraFuser, False), (LeakingFuser, True)], ids=["fuser", "leaking"])
def test_swaps_leave_no_memory_behind(
    engine: SdxlLoraEngine, lora_files: dict[str, Path], fuser_class: type[LoraFuser], leaks: bool
) -> None:
    plans = [engine.plan_lora(load_file(lora_files[name])) for name in ("a", "b")]
    growth = heap_growth_over_swaps(fuser_class(engine.pipeline), plans, swaps=6)
    assert (growth > HEAP_SLACK_BYTES) is leaks, f"heap grew {growth} bytes over 6 swaps"
