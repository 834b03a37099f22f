"""The grouped fuse (same-shaped layers stacked, one batched matmul per group) matches the per-layer update, whatever
the group size cap and whichever way the updates are added."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gpu.engine.lora.fuser import FuseAdd, LoraFuser
from gpu.engine.lora.groups import stack_groups
from gpu.engine.lora.plan import LayerDelta, LoraPlan, grouped, layers_of, pinned


def model_and_deltas() -> tuple[nn.Sequential, tuple[LayerDelta, ...]]:
    torch.manual_seed(1)
    unet = nn.Sequential(
        nn.Linear(32, 48, bias=False), nn.Linear(32, 48, bias=False), nn.Linear(48, 32, bias=False),
        nn.Conv2d(4, 8, 3, bias=False), nn.Linear(32, 48, bias=False),
    )  # fmt: skip
    deltas = (
        LayerDelta("unet", "0", torch.randn(4, 32), torch.randn(48, 4), alpha_scale=0.5),
        LayerDelta("unet", "1", torch.randn(4, 32), torch.randn(48, 4), alpha_scale=1.0),
        LayerDelta("unet", "2", torch.randn(4, 48), torch.randn(32, 4), alpha_scale=1.0),
        LayerDelta("unet", "3", torch.randn(2, 4, 3, 3), torch.randn(8, 2, 1, 1), alpha_scale=2.0),
        LayerDelta("unet", "4", torch.randn(2, 32), torch.randn(48, 2), alpha_scale=1.0),  # same shape, other rank
    )
    return unet, deltas


def test_layers_are_grouped_by_shape_and_rank_and_cut_at_the_size_cap() -> None:
    _, deltas = model_and_deltas()
    groups = stack_groups(layers_of(deltas))
    assert sorted(len(g.keys) for g in groups) == [1, 1, 1, 2]
    one_layer_bytes = 48 * 32 * 4
    assert all(len(g.keys) == 1 for g in stack_groups(layers_of(deltas), max_update_bytes=one_layer_bytes))


def test_a_grouped_plan_holds_its_deltas_as_views_of_the_stacks() -> None:
    _, deltas = model_and_deltas()
    plan = grouped(deltas)
    stacks = {g.down.untyped_storage().data_ptr() for g in plan.groups}
    assert all(d.down.untyped_storage().data_ptr() in stacks for d in plan.deltas)
    assert all(
        torch.equal(a.down, b.down) and torch.equal(a.up, b.up) for a, b in zip(plan.deltas, deltas, strict=True)
    )
    if torch.cuda.is_available():  # pinning needs a CUDA runtime
        assert all(g.down.is_pinned() for g in pinned(plan).groups)


@pytest.mark.parametrize("fuse_add", ["direct", "staged"])
@pytest.mark.parametrize("cap", [48 * 32 * 4, 1 << 30], ids=["a-layer-per-group", "one-group-per-shape"])
def test_the_grouped_fuse_adds_each_layers_own_update(cap: int, fuse_add: FuseAdd) -> None:
    unet, deltas = model_and_deltas()
    originals = [m.weight.detach().clone() for m in unet]
    plan = LoraPlan(deltas, stack_groups(layers_of(deltas), max_update_bytes=cap))
    fuser = LoraFuser(SimpleNamespace(unet=unet), fuse_add=fuse_add)

    assert fuser.fuse(plan, 0.7) == len(deltas)
    for module, original, d in zip(unet, originals, deltas, strict=True):
        update = (d.up.flatten(1) @ d.down.flatten(1)).reshape(original.shape) * (0.7 * d.alpha_scale)
        torch.testing.assert_close(module.weight, original + update, rtol=1e-6, atol=1e-6)
    assert fuser.restore() == []
    assert all(torch.equal(m.weight, o) for m, o in zip(unet, originals, strict=True))
