"""Fusing adds the fp32 update in place and rounds once: the same bits as adding in fp32 and casting back, in every
dtype the worker serves and by both ways of adding (direct and staged through an fp32 workspace); the fused weights
are within one unit in the last place of the float64 result; and a restore gives the original bits back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gpu.engine.lora.fuser import FuseAdd, LoraFuser
from gpu.engine.lora.groups import stack_groups
from gpu.engine.lora.plan import LayerDelta, LoraPlan, layers_of

SCALE = 0.8


def model_and_deltas(dtype: torch.dtype) -> tuple[nn.Sequential, tuple[LayerDelta, ...]]:
    torch.manual_seed(0)
    unet = nn.Sequential(
        nn.Linear(96, 64, bias=False), nn.Linear(96, 64, bias=False), nn.Conv2d(8, 16, 3, bias=False)
    ).to(dtype)
    deltas = (
        LayerDelta("unet", "0", torch.randn(4, 96), torch.randn(64, 4), alpha_scale=0.5),
        LayerDelta("unet", "1", torch.randn(4, 96), torch.randn(64, 4), alpha_scale=0.25),  # same group, other alpha
        LayerDelta("unet", "2", torch.randn(4, 8, 3, 3), torch.randn(16, 4, 1, 1), alpha_scale=1.0),
    )
    return unet, deltas


def ordered_bits(tensor: torch.Tensor) -> torch.Tensor:
    """Each value's place on the line of representable numbers of its dtype (adjacent values differ by 1)."""
    bits = tensor.contiguous().view(torch.int32 if tensor.dtype == torch.float32 else torch.int16).long()
    sign = 1 << (8 * tensor.element_size() - 1)
    return torch.where(bits < 0, -(bits + sign), bits)


@pytest.mark.parametrize("fuse_add", ["direct", "staged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_weights_are_the_fp32_sum_rounded_once_and_restore_exactly(dtype: torch.dtype, fuse_add: FuseAdd) -> None:
    unet, deltas = model_and_deltas(dtype)
    originals = [m.weight.detach().clone() for m in unet]
    updates = {
        key: update
        for group in stack_groups(layers_of(deltas))
        for key, update in zip(group.keys, group.updates(SCALE, torch.device("cpu")), strict=True)
    }
    fuser = LoraFuser(SimpleNamespace(unet=unet), fuse_add=fuse_add)

    assert fuser.fuse(LoraPlan(deltas), SCALE) == 3
    for module, original, d in zip(unet, originals, deltas, strict=True):
        update = updates[(d.component, d.module_path)].view(original.shape)
        assert torch.equal(module.weight, (original.float() + update).to(dtype)), "not rounded once"
        product = (d.up.double().flatten(1) @ d.down.double().flatten(1)).view(original.shape)
        exact = original.double() + SCALE * d.alpha_scale * product
        torch.testing.assert_close(update.double(), exact - original.double(), rtol=1e-6, atol=1e-6)
        if dtype != torch.float32:
            # At most one unit in the last place from the correctly rounded result (the fp32 update's own rounding).
            off = (ordered_bits(module.weight.detach()) - ordered_bits(exact.to(dtype))).abs()
            assert int(off.max()) <= 1
    assert fuser.restore() == []
    assert all(torch.equal(m.weight, o) for m, o in zip(unet, originals, strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_staged_and_the_direct_add_give_the_same_bits(dtype: torch.dtype) -> None:
    fused = {}
    for fuse_add in ("direct", "staged"):
        unet, deltas = model_and_deltas(dtype)
        fuser = LoraFuser(SimpleNamespace(unet=unet), fuse_add=fuse_add)  # type: ignore[arg-type]
        fuser.fuse(LoraPlan(deltas), SCALE)
        fused[fuse_add] = [m.weight.detach().clone() for m in unet]
    assert all(torch.equal(a, b) for a, b in zip(fused["direct"], fused["staged"], strict=True))
