"""The check after a restore: both ways of comparing name exactly the altered layer, the rotating sample covers every
layer, and a layer a broken restore keeps missing is reported (at once by the full check, within ceil(layers / sample)
restores by the sampled one)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.groups import LayerKey
from gpu.engine.lora.plan import LayerDelta, LoraPlan
from gpu.engine.lora.restore_check import RotatingSample, batched_differences, check_is_sampled, each_difference

LAYERS = 5


@pytest.mark.parametrize("differences", [batched_differences, each_difference], ids=["batched", "each"])
def test_both_restore_checks_name_exactly_the_altered_layer(
    differences: Callable[[list[torch.Tensor], list[torch.Tensor]], list[bool]],
) -> None:
    weights = [torch.randn(16, 8) for _ in range(5)]
    originals = [w.clone() for w in weights]
    assert differences(weights, originals) == [False] * 5
    weights[3][7, 2] = torch.nextafter(weights[3][7, 2], torch.tensor(1e9))  # one ulp in one element
    assert differences(weights, originals) == [False, False, False, True, False]


def test_the_rotating_sample_covers_every_layer_within_ceil_layers_over_sample_picks() -> None:
    keys: list[LayerKey] = [("unet", str(i)) for i in range(7)]
    sample = RotatingSample(3)
    picks = [sample.pick(keys) for _ in range(math.ceil(7 / 3))]
    assert all(len(pick) == 3 for pick in picks)
    assert {key for pick in picks for key in pick} == set(keys)
    assert RotatingSample(10).pick(keys) == keys  # fewer layers than the sample: all of them


def test_auto_samples_on_a_gpu_only() -> None:
    assert check_is_sampled("auto", torch.device("cuda")) and not check_is_sampled("auto", torch.device("cpu"))
    assert check_is_sampled("sampled", torch.device("cpu")) and not check_is_sampled("full", torch.device("cuda"))


class SkippingCopy:
    """Fault injection: stands in for the fuser's copy back and leaves one layer fused (a restore with a bug)."""

    def __init__(self, fuser: LoraFuser, skipped: LayerKey) -> None:
        self.real, self.skipped = fuser._copy_back, skipped

    def __call__(self, keys: list[LayerKey]) -> None:
        self.real([key for key in keys if key != self.skipped])


def fused_model(check: str) -> tuple[LoraFuser, LoraPlan, nn.Sequential]:
    torch.manual_seed(2)
    unet = nn.Sequential(*(nn.Linear(8, 8, bias=False) for _ in range(LAYERS)))
    deltas = tuple(LayerDelta("unet", str(i), torch.randn(2, 8), torch.randn(8, 2), 1.0) for i in range(LAYERS))
    fuser = LoraFuser(SimpleNamespace(unet=unet), check=check, check_sample=2)  # type: ignore[arg-type]
    return fuser, LoraPlan(deltas), unet


@pytest.mark.parametrize(("check", "within"), [("full", 1), ("sampled", math.ceil(LAYERS / 2))])
def test_a_layer_the_restore_keeps_missing_is_reported(
    check: str, within: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fuser, plan, unet = fused_model(check)
    missed: LayerKey = ("unet", "3")
    monkeypatch.setattr(fuser, "_copy_back", SkippingCopy(fuser, missed))
    reports = []
    for _ in range(within):
        fuser.fuse(plan, 1.0)
        reports.append(fuser.restore())
        with torch.no_grad():  # what the broken restore left: put it back, so each round starts from the base
            unet[3].weight.copy_(fuser._live[missed][1])
    assert ["unet.3"] in reports
    assert all(report in ([], ["unet.3"]) for report in reports)


def test_the_sampled_check_compares_only_its_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    fuser, plan, _ = fused_model("sampled")
    compared: list[int] = []
    real = fuser._altered
    monkeypatch.setattr(fuser, "_altered", lambda keys: compared.append(len(keys)) or real(keys))
    for _ in range(3):
        fuser.fuse(plan, 1.0)
        assert fuser.restore() == []
    assert compared == [2, 2, 2]
