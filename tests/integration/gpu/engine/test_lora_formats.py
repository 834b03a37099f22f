"""LoCon (CP cores), LyCORIS LoHa and LoKr, and DoRA on the real tiny SDXL: the fused weights are each format's
formula (float64 reference, tests/support/lora_formats.py) within fp32 rounding, peft's own merge agrees on the files
peft writes, restore is bit-exact, and at scale 0 the weights and the image are the base's, byte for byte."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoHaConfig, LoKrConfig, LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.engine.lora.formats.dora import DoraStep
from gpu.engine.lora.formats.steps import DenseStep
from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.plan import LoraPlan, plan_lora
from tests.support.engine import render_pixels, weight_of
from tests.support.lora_formats import (
    FormatFile,
    dora_file,
    locon_file,
    loha_file,
    lokr_file,
    reduction_length,
    reference_weight,
)

# fp32's unit roundoff: the fused weight is computed in fp32 (rounded once into the fp32 tiny model), so it may differ
# from the float64 formula by a few units of it per term of the layer's longest sum, relative to the layer's scale.
FP32_UNIT_ROUNDOFF = 2.0**-24
DORA_LAYERS = (
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("unet", "down_blocks.1.resnets.0.conv1"),
    ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_k"),
    ("text_encoder", "encoder.layers.0.mlp.fc2"),
)


def format_file(name: str, pipeline: StableDiffusionXLPipeline) -> FormatFile:
    if name == "dora":
        return dora_file({key: weight_of(pipeline, *key).detach().clone() for key in DORA_LAYERS})
    builders: dict[str, Callable[[], FormatFile]] = {"loha": loha_file, "lokr": lokr_file, "locon": locon_file}
    return builders[name]()


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


FORMATS = ("loha", "lokr", "locon", "dora")
# Which layers of each file take the grouped low-rank add and which a per-layer step (so both paths are exercised).
STEP_KINDS = {
    "loha": {"DenseStep": 1},  # rank 8 on 64×256: its rank-64 low-rank form would be larger than the update
    "lokr": {"DenseStep": 1},  # whole 4×4 ⊗ 16×16 factors: full rank
    "locon": {},
    "dora": {"DoraStep": 4},
}


@pytest.mark.parametrize("name", FORMATS)
def test_fused_weights_follow_the_formula_and_restore_exactly(name: str, pipeline: StableDiffusionXLPipeline) -> None:
    lora = format_file(name, pipeline)
    before = fingerprint_pipeline(pipeline)
    base = {
        (layer.component, layer.path): weight_of(pipeline, layer.component, layer.path).detach().clone()
        for layer in lora.layers
    }
    plan = plan_lora(pipeline, lora.state())
    kinds: dict[str, int] = {}
    for step in plan.steps:
        kinds[type(step).__name__] = kinds.get(type(step).__name__, 0) + 1
    assert kinds == STEP_KINDS[name]
    assert len(plan.deltas) + len(plan.steps) == len(lora.layers)
    fuser = LoraFuser(pipeline)

    for scale in (1.0, 0.7):
        fuser.fuse(plan, scale)
        for layer in lora.layers:
            original = base[(layer.component, layer.path)]
            expected = reference_weight(layer.tensors, original, scale)
            fused = weight_of(pipeline, layer.component, layer.path).detach().double()
            tolerance = reduction_length(layer.tensors, tuple(original.shape)) * FP32_UNIT_ROUNDOFF
            tolerance *= float(expected.abs().max())
            error = float((fused - expected).abs().max())
            assert error <= tolerance, (name, layer.path, scale, error, tolerance)
            # The update is far above that tolerance: a wrong formula could not pass.
            assert float((expected - original.double()).abs().max()) > 1000 * tolerance, (name, layer.path)
        assert fuser.restore() == []
        assert fingerprint_pipeline(pipeline) == before


@pytest.mark.parametrize("name", FORMATS)
def test_at_scale_zero_weights_and_image_are_the_base_bit_for_bit(
    name: str, pipeline: StableDiffusionXLPipeline
) -> None:
    lora = format_file(name, pipeline)
    plan = plan_lora(pipeline, lora.state())
    base_image = render_pixels(pipeline, steps=2)
    before = fingerprint_pipeline(pipeline)
    fuser = LoraFuser(pipeline)

    fuser.fuse(plan, 0.0)
    at_zero = fingerprint_pipeline(pipeline)
    image = render_pixels(pipeline, steps=2)
    assert fuser.restore() == []
    fuser.fuse(plan, 1.0)
    changed = render_pixels(pipeline, steps=2)
    assert fuser.restore() == []

    assert at_zero == before
    assert np.array_equal(image, base_image)
    assert np.abs(changed - base_image).max() > 1e-3, "the format changed nothing at scale 1"
    assert fingerprint_pipeline(pipeline) == before


def test_restore_is_bit_exact_in_bf16_after_every_format(tiny_model_dir: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    before = fingerprint_pipeline(pipe)
    fuser = LoraFuser(pipe)
    for name in FORMATS:
        plan = plan_lora(pipe, format_file(name, pipe).state())
        fuser.fuse(plan, 1.3)
        assert fingerprint_pipeline(pipe) != before, name
        assert fuser.restore() == []
        assert fingerprint_pipeline(pipe) == before, name


def peft_file_and_merge(
    pipeline: StableDiffusionXLPipeline, config: LoraConfig | LoHaConfig | LoKrConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A file peft writes for the tiny UNet (`unet.`-prefixed, as diffusers saves it) and the weights peft's own merge
    gives each adapted layer."""
    unet = copy.deepcopy(pipeline.unet)
    torch.manual_seed(7)
    unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    if any(key.endswith("lora_magnitude_vector") for key in state):
        # Trained magnitudes differ from the base norms they start at.
        for key in [key for key in state if key.endswith("lora_magnitude_vector")]:
            state[key] = state[key] * (1 + 0.2 * torch.randn(state[key].shape))
        unet.load_state_dict({k.replace("lora_magnitude_vector", "lora_magnitude_vector.default.weight"): v
                              for k, v in state.items() if "magnitude" in k}, strict=False)  # fmt: skip
    merged = {}
    for path, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            merged[path] = module.get_base_layer().weight.detach().clone()
    return {f"unet.{key}": value.detach().clone().contiguous() for key, value in state.items()}, merged


PEFT_CONFIGS = {
    "loha": lambda: LoHaConfig(r=3, alpha=3, target_modules=["to_q", "conv1"], use_effective_conv2d=True,
                               init_weights=False),
    "lokr": lambda: LoKrConfig(r=2, alpha=2, target_modules=["to_k", "conv2"], decompose_factor=4, init_weights=False),
    "dora": lambda: LoraConfig(r=2, lora_alpha=2, use_dora=True, target_modules=["to_v", "conv1"],
                               init_lora_weights=False),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PEFT_CONFIGS))
def test_files_peft_writes_fuse_to_the_weights_peft_merges(name: str, pipeline: StableDiffusionXLPipeline) -> None:
    state, merged = peft_file_and_merge(pipeline, PEFT_CONFIGS[name]())
    assert not any(key.endswith(".alpha") for key in state)  # peft keeps alpha in its config: alpha == r here
    before = fingerprint_pipeline(pipeline)
    plan = plan_lora(pipeline, state)
    assert {d.module_path for d in plan.deltas} | {s.key[1] for s in plan.steps} == set(merged)
    if name == "dora":
        assert all(isinstance(step, DoraStep) for step in plan.steps) and not plan.deltas
    fuser = LoraFuser(pipeline)
    fuser.fuse(plan, 1.0)
    for path, expected in merged.items():
        fused = weight_of(pipeline, "unet", path)
        # peft merges in fp32 with its own operation order: the same fp32 rounding bound, relative to the layer.
        torch.testing.assert_close(fused, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))
        assert not torch.equal(expected, before_weight(fuser, path)), "peft merged nothing"
    assert fuser.restore() == []
    assert fingerprint_pipeline(pipeline) == before


def before_weight(fuser: LoraFuser, path: str) -> torch.Tensor:
    """The pristine copy the fuser kept of a UNet layer."""
    return fuser._pristine[("unet", path)]


def test_a_plan_counts_the_bytes_of_its_steps(pipeline: StableDiffusionXLPipeline) -> None:
    plan = plan_lora(pipeline, loha_file().state())
    (step,) = plan.steps
    assert isinstance(step, DenseStep)
    deltas_only = LoraPlan(plan.deltas, plan.groups)
    assert plan.nbytes == deltas_only.nbytes + step.nbytes > deltas_only.nbytes
