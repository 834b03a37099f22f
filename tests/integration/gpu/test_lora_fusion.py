"""Our fuse-and-restore gives the image diffusers' own (unfused, peft) LoRA loading gives, and restores exactly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from gpu.fingerprint import fingerprint_pipeline
from gpu.lora.fuser import LoraFuser
from gpu.lora.plan import plan_lora
from gpu.tiny.lora import write_lora


def render(pipeline: StableDiffusionXLPipeline) -> np.ndarray:
    result = pipeline(
        prompt="a portrait of sks person",
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(11),
        output_type="np",
    )
    return np.asarray(result.images[0])


@pytest.fixture(scope="module")
def te_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lora(tmp_path_factory.mktemp("te") / "te.safetensors", seed=5, text_encoders=True)


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_fused_lora_matches_diffusers_adapter(tiny_model_dir: Path, te_lora: Path, scale: float) -> None:
    state = load_file(te_lora)
    reference_pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    reference_pipe.set_progress_bar_config(disable=True)
    reference_pipe.load_lora_weights(dict(state), adapter_name="ref")
    reference_pipe.set_adapters(["ref"], adapter_weights=[scale])
    assert set(reference_pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
    expected = render(reference_pipe)

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipeline.set_progress_bar_config(disable=True)
    base = render(pipeline)
    before = fingerprint_pipeline(pipeline)
    fuser = LoraFuser(pipeline)
    plan = plan_lora(pipeline, state)
    assert {d.component for d in plan.deltas} == {"unet", "text_encoder", "text_encoder_2"}
    fuser.fuse(plan, scale)
    fused = render(pipeline)
    assert fuser.restore() == []

    assert np.abs(fused - base).max() > 1e-2, "the LoRA changed nothing"
    assert np.abs(fused - expected).max() < 1e-4
    assert fingerprint_pipeline(pipeline) == before
    assert np.array_equal(render(pipeline), base)


def test_fusing_twice_without_restore_is_refused(tiny_model_dir: Path, te_lora: Path) -> None:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    fuser = LoraFuser(pipeline)
    plan = plan_lora(pipeline, load_file(te_lora))
    fuser.fuse(plan, 1.0)
    with pytest.raises(RuntimeError):
        fuser.fuse(plan, 1.0)
    fuser.restore()


def test_pristine_copies_on_cpu_restore_exactly(tiny_model_dir: Path, te_lora: Path) -> None:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    before = fingerprint_pipeline(pipeline)
    fuser = LoraFuser(pipeline, pristine_device="cpu")
    plan = plan_lora(pipeline, load_file(te_lora))
    for scale in (1.0, 0.3, 1.7):
        fuser.fuse(plan, scale)
        assert fingerprint_pipeline(pipeline) != before
        fuser.restore()
        assert fingerprint_pipeline(pipeline) == before
    assert fuser.pristine_bytes > 0
