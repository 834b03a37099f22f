"""Fusing adds the fp32 update in place and rounds once: the same bits as adding in fp32 and casting back, in every
dtype the worker serves, and a restore gives the original bits back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.plan import LayerDelta, LoraPlan


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_weights_are_the_fp32_sum_rounded_once_and_restore_exactly(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    unet = nn.Sequential(nn.Linear(96, 64, bias=False), nn.Conv2d(8, 16, 3, bias=False)).to(dtype)
    pipeline = SimpleNamespace(unet=unet)
    deltas = (
        LayerDelta("unet", "0", torch.randn(4, 96), torch.randn(64, 4), alpha_scale=0.5),
        LayerDelta("unet", "1", torch.randn(4, 8, 3, 3), torch.randn(16, 4, 1, 1), alpha_scale=1.0),
    )
    originals = [unet[0].weight.detach().clone(), unet[1].weight.detach().clone()]
    expected = [
        (w.float() + (d.up.flatten(1) @ d.down.flatten(1)).reshape(w.shape) * (0.8 * d.alpha_scale)).to(dtype)
        for w, d in zip(originals, deltas, strict=True)
    ]
    fuser = LoraFuser(pipeline)

    assert fuser.fuse(LoraPlan(deltas), 0.8) == 2
    assert torch.equal(unet[0].weight, expected[0]) and torch.equal(unet[1].weight, expected[1])
    assert fuser.restore() == []
    assert torch.equal(unet[0].weight, originals[0]) and torch.equal(unet[1].weight, originals[1])
