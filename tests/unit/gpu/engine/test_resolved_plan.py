"""A plan is resolved to the model's weights once, and again only when the modules under it changed: a weight
re-registered or replaced behind torch's back, a layer put in another's place, a component swapped. Registrations
elsewhere (diffusers slices ModuleLists in every forward) change nothing, and a resolution goes when its plan does."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gpu.engine.lora.resolved as resolved_module
from gpu.engine.lora.formats.steps import DenseStep, ProductUpdate
from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.plan import LayerDelta, LoraPlan


def model_and_plan() -> tuple[SimpleNamespace, LoraPlan]:
    torch.manual_seed(4)
    unet = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ModuleList([nn.Linear(8, 8, bias=False)]))
    deltas = (
        LayerDelta("unet", "0", torch.randn(2, 8), torch.randn(8, 2), 1.0),
        LayerDelta("unet", "1.0", torch.randn(2, 8), torch.randn(8, 2), 1.0),
    )
    return SimpleNamespace(unet=unet), LoraPlan(deltas)


class CountingWalk:
    """Counts the module-tree walks resolutions make (the real walk runs)."""

    def __init__(self) -> None:
        self.real, self.calls = resolved_module.module_path, 0

    def __call__(self, root: nn.Module, path: str) -> list[nn.Module]:
        self.calls += 1
        return self.real(root, path)


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> CountingWalk:
    counter = CountingWalk()
    monkeypatch.setattr(resolved_module, "module_path", counter)
    return counter


def swap(fuser: LoraFuser, plan: LoraPlan) -> None:
    fuser.fuse(plan, 1.0)
    assert fuser.restore() == []


def test_a_plan_is_resolved_once_across_swaps(walks: CountingWalk) -> None:
    pipeline, plan = model_and_plan()
    fuser = LoraFuser(pipeline)
    for _ in range(4):
        swap(fuser, plan)
    assert walks.calls == 2  # its two layers, on the first swap only


def test_registrations_outside_the_resolved_paths_change_nothing(walks: CountingWalk) -> None:
    pipeline, plan = model_and_plan()
    fuser = LoraFuser(pipeline)
    swap(fuser, plan)
    generation = resolved_module.structure_generation()
    pipeline.unet[1][0:]  # a slice: a new ModuleList with the layer registered into it, as diffusers' forwards do
    nn.Linear(4, 4)  # a module made elsewhere registers its own parameters
    swap(fuser, plan)
    assert resolved_module.structure_generation() == generation and walks.calls == 2


def replace_parameter(pipeline: SimpleNamespace) -> None:
    pipeline.unet[0].weight = nn.Parameter(torch.randn(8, 8))


def replace_behind_torchs_back(pipeline: SimpleNamespace) -> None:
    pipeline.unet[0]._parameters["weight"] = nn.Parameter(torch.randn(8, 8))  # as accelerate does


def replace_layer(pipeline: SimpleNamespace) -> None:
    layer = nn.Linear(8, 8, bias=False)
    pipeline.unet[0] = layer


def replace_component(pipeline: SimpleNamespace) -> None:
    unet = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ModuleList([nn.Linear(8, 8, bias=False)]))
    pipeline.unet = unet


@pytest.mark.parametrize(
    "change",
    [replace_parameter, replace_behind_torchs_back, replace_layer, replace_component],
    ids=lambda f: f.__name__,
)
def test_a_change_under_the_plan_resolves_it_again_and_retakes_the_originals(
    change: object, walks: CountingWalk
) -> None:
    pipeline, plan = model_and_plan()
    fuser = LoraFuser(pipeline)
    swap(fuser, plan)
    assert callable(change)
    change(pipeline)
    weight = pipeline.unet[0].weight
    base = weight.detach().clone()

    fuser.fuse(plan, 1.0)
    assert not torch.equal(weight, base), "the fuse went to a weight no longer in the model"
    assert fuser.restore() == []
    assert torch.equal(weight, base), "restored from an original of the replaced weight"
    assert walks.calls == 4


def test_a_resolution_goes_with_its_plan() -> None:
    pipeline, plan = model_and_plan()
    fuser = LoraFuser(pipeline)
    swap(fuser, plan)
    assert fuser.resolved_plans == 1
    del plan
    gc.collect()
    assert fuser.resolved_plans == 0


def test_forgetting_is_refused_while_a_lora_is_fused() -> None:
    pipeline, plan = model_and_plan()
    fuser = LoraFuser(pipeline)
    fuser.fuse(plan, 1.0)
    with pytest.raises(RuntimeError):
        fuser.forget()
    fuser.restore()
    fuser.forget()
    assert fuser.pristine_bytes == 0 and fuser.resolved_plans == 0


def test_a_plans_per_layer_steps_are_resolved_with_it_and_restored(walks: CountingWalk) -> None:
    pipeline, plan = model_and_plan()
    step = DenseStep(("unet", "1.0"), ProductUpdate(torch.randn(8, 2), torch.randn(2, 8)), 0.5)
    with_step = LoraPlan(plan.deltas[:1], steps=(step,))
    fuser = LoraFuser(pipeline)
    base = pipeline.unet[1][0].weight.detach().clone()
    for _ in range(3):
        fuser.fuse(with_step, 1.0)
        assert not torch.equal(pipeline.unet[1][0].weight, base)
        assert fuser.restore() == []
        assert torch.equal(pipeline.unet[1][0].weight, base)
    assert walks.calls == 2  # the delta's layer and the step's, once
