"""The DoRA step: the trained weight at scale 1 (either axis), the base weight untouched at scale 0 (even where the
norm is zero), a blend between, all in one rounding into the weight's dtype."""

from __future__ import annotations

import pytest
import torch

from contracts.lora_formats import DoraAxis
from gpu.engine.lora.formats.dora import LYCORIS_NORM_EPS, DoraStep, column_norms, dora_weight
from gpu.engine.lora.formats.steps import ProductUpdate


def step(weight: torch.Tensor, axis: DoraAxis, magnitude: torch.Tensor | None = None) -> DoraStep:
    torch.manual_seed(1)
    up, down = torch.randn(weight.shape[0], 2), torch.randn(2, weight[0].numel())
    norms = column_norms(weight.double(), axis)
    magnitude = magnitude if magnitude is not None else (norms * 1.3).float()
    return DoraStep(("unet", "x"), ProductUpdate(up, down), 0.5, magnitude, axis, LYCORIS_NORM_EPS)


@pytest.mark.parametrize("axis", list(DoraAxis))
@pytest.mark.parametrize("shape", [(8, 6), (8, 4, 3, 3)])
def test_scale_one_is_the_trained_weight_and_scale_zero_the_base(axis: DoraAxis, shape: tuple[int, ...]) -> None:
    weight = torch.randn(*shape)
    dora = step(weight, axis)
    delta = (dora.update.dense(weight.device) * 0.5).view(shape).double()
    trained = dora_weight(weight.double(), delta, dora.magnitude.double(), axis, LYCORIS_NORM_EPS)
    # The trained weight's norms along the axis are the magnitudes (the definition of DoRA).
    torch.testing.assert_close(column_norms(trained, axis), dora.magnitude.double(), rtol=1e-6, atol=0)

    full, half, untouched = weight.clone(), weight.clone(), weight.clone()
    dora.apply(full, 1.0)
    dora.apply(half, 0.5)
    dora.apply(untouched, 0.0)
    torch.testing.assert_close(full.double(), trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(half.double(), (weight.double() + trained) / 2, rtol=1e-5, atol=1e-5)
    assert torch.equal(untouched, weight)


def test_a_zero_norm_gives_no_nan_and_scale_zero_keeps_negative_zeros() -> None:
    weight = torch.zeros(4, 3)
    weight[0] = -0.0
    dora = DoraStep(("unet", "x"), ProductUpdate(torch.zeros(4, 1), torch.zeros(1, 3)), 1.0, torch.ones(4, 1),
                    DoraAxis.OUT, 0.0)  # fmt: skip
    untouched = weight.clone()
    dora.apply(untouched, 0.0)
    assert torch.equal(untouched.view(torch.int32), weight.view(torch.int32))  # bit for bit, signs of zero too
    dora.apply(weight, 1.0)
    assert torch.isfinite(weight).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_step_rounds_once_into_half_precision(dtype: torch.dtype) -> None:
    weight = torch.randn(8, 6).to(dtype)
    dora = step(weight.float(), DoraAxis.OUT)
    base = weight.float()
    delta = dora.update.dense(weight.device).view(8, 6) * 0.5
    expected = (base + 0.7 * (dora_weight(base, delta, dora.magnitude, DoraAxis.OUT, dora.eps) - base)).to(dtype)
    dora.apply(weight, 0.7)
    assert torch.equal(weight, expected)
