"""Our fuse-and-restore gives the image diffusers' own (unfused, peft) LoRA loading gives, and restores exactly."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from safetensors.torch import load_file

from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.plan import plan_lora
from gpu.tiny.lora import write_lora
from tests.support.engine import render_pixels


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
    expected = render_pixels(reference_pipe, steps=3)

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipeline.set_progress_bar_config(disable=True)
    base = render_pixels(pipeline, steps=3)
    before = fingerprint_pipeline(pipeline)
    fuser = LoraFuser(pipeline)
    plan = plan_lora(pipeline, state)
    assert {d.component for d in plan.deltas} == {"unet", "text_encoder", "text_encoder_2"}
    fuser.fuse(plan, scale)
    fused = render_pixels(pipeline, steps=3)
    assert fuser.restore() == []

    assert np.abs(fused - base).max() > 1e-2, "the LoRA changed nothing"
    assert np.abs(fused - expected).max() < 1e-4
    assert fingerprint_pipeline(pipeline) == before
    assert np.array_equal(render_pixels(pipeline, steps=3), base)


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


def test_text_encoder_keys_with_the_older_text_model_prefix_still_fit(tiny_model_dir: Path, te_lora: Path) -> None:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    state = load_file(te_lora)
    # LoRAs trained with transformers 4 name text_encoder layers `text_model.encoder...`; 5.x flattened it.
    older = {
        (k.replace("text_encoder.", "text_encoder.text_model.", 1) if k.startswith("text_encoder.") else k): v
        for k, v in state.items()
    }
    assert older != state
    current = plan_lora(pipeline, state)
    converted = plan_lora(pipeline, older)
    assert [(d.component, d.module_path) for d in converted.deltas] == [
        (d.component, d.module_path) for d in current.deltas
    ]


def kohya_lora(rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA (lora_unet_* keys with .alpha) for the tiny UNet, via diffusers' own converter."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from gpu.tiny.model import build_tiny_unet

    unet = build_tiny_unet(0)
    torch.manual_seed(3)
    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    peft_state = {f"unet.{key}": value for key, value in get_peft_model_state_dict(unet).items()}
    kohya = convert_state_dict_to_kohya(peft_state)
    # The converter writes alpha = rank; a kohya trainer writes the alpha it trained with.
    return {k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}


def test_kohya_layout_with_alpha_matches_diffusers(tiny_model_dir: Path) -> None:
    state = kohya_lora(rank=4, alpha=2.0)
    assert any(k.startswith("lora_unet_") for k in state) and any(k.endswith(".alpha") for k in state)
    reference_pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    reference_pipe.set_progress_bar_config(disable=True)
    reference_pipe.load_lora_weights(dict(state), adapter_name="ref")
    expected = render_pixels(reference_pipe, steps=3)

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipeline.set_progress_bar_config(disable=True)
    plan = plan_lora(pipeline, state)
    assert {d.alpha_scale for d in plan.deltas} == {0.5}
    fuser = LoraFuser(pipeline)
    fuser.fuse(plan, 1.0)
    fused = render_pixels(pipeline, steps=3)
    fuser.restore()
    assert np.abs(fused - expected).max() < 1e-4


def test_kohya_text_encoder_layers_with_alpha_match_diffusers(tiny_model_dir: Path, te_lora: Path) -> None:
    """kohya names text-encoder attention `self_attn_q_proj`; diffusers' converter renames it `to_q_lora`, which
    must land on q_proj again (as diffusers' own loader puts it), with the alpha applied."""
    sides = {"down": "lora_A", "up": "lora_B"}
    peft = {
        re.sub(r"\.lora(?:_linear_layer)?\.(down|up)\.weight$", lambda m: f".{sides[m[1]]}.weight", key): value
        for key, value in load_file(te_lora).items()
    }
    kohya = {
        key: (torch.tensor(2.0) if key.endswith(".alpha") else value.contiguous())
        for key, value in convert_state_dict_to_kohya(peft).items()
    }
    assert any(key.startswith("lora_te1_") and "self_attn_q_proj" in key for key in kohya)
    reference_pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    reference_pipe.set_progress_bar_config(disable=True)
    reference_pipe.load_lora_weights(dict(kohya), adapter_name="ref")
    expected = render_pixels(reference_pipe, steps=3)

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipeline.set_progress_bar_config(disable=True)
    plan = plan_lora(pipeline, kohya)
    assert {d.component for d in plan.deltas} == {"unet", "text_encoder", "text_encoder_2"}
    assert {d.module_path.rsplit(".", 1)[-1] for d in plan.deltas if d.component != "unet"} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
    }
    fuser = LoraFuser(pipeline)
    fuser.fuse(plan, 1.0)
    fused = render_pixels(pipeline, steps=3)
    fuser.restore()
    assert np.abs(fused - expected).max() < 1e-4


@pytest.mark.parametrize(
    ("fuse_add", "check"), [("direct", "full"), ("staged", "sampled")], ids=["direct-full-check", "staged-sampled"]
)
def test_alternating_loras_and_scales_in_bf16_restore_exactly_either_way(
    tiny_model_dir: Path, te_lora: Path, lora_files: dict[str, Path], fuse_add: str, check: str
) -> None:
    """The GPU's way (staged through an fp32 workspace, sampled check) and the CPU's, forced here on a CPU: after LoRAs
    with text-encoder layers and without, at several scales, the base weights are bit-identical, and the staged and
    direct fuses of one LoRA give the same weights."""
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    before = fingerprint_pipeline(pipeline)
    fuser = LoraFuser(pipeline, fuse_add=fuse_add, check=check)  # type: ignore[arg-type]
    reference = LoraFuser(pipeline, fuse_add="direct", check="full")
    plans = [plan_lora(pipeline, load_file(te_lora)), plan_lora(pipeline, load_file(lora_files["b"]))]
    for index, scale in enumerate((1.0, 0.3, 1.7, 0.9)):
        plan = plans[index % 2]
        reference.fuse(plan, scale)
        expected = fingerprint_pipeline(pipeline)
        assert reference.restore() == []
        fuser.fuse(plan, scale)
        assert fingerprint_pipeline(pipeline) == expected
        assert fuser.restore() == []
        assert fingerprint_pipeline(pipeline) == before
