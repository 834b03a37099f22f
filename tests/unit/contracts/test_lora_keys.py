"""The header-only LoRA check: every layout the worker reads is accepted with its summary; foreign files are refused."""

from __future__ import annotations

import json
import re

import pytest

from contracts.lora_keys import (
    MAX_RANK,
    LoraRejectedError,
    LoraRejectReason,
    LoraSummary,
    check_lora_layers,
    check_lora_tensors,
)
from contracts.lora_targets import KNOWN_BASE_MODELS, TargetTable, load_target_table
from contracts.safetensors_header import HEADER_LENGTH_BYTES, check_header, header_length
from tests.support.safetensors_bytes import safetensors_bytes

SDXL = load_target_table("sdxl-base-1.0")
UNET = SDXL.components["unet"]
ATTENTION = sorted(p for p in UNET if re.search(r"\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0)$", p))
Shapes = dict[str, list[int]]


def entries(shapes: Shapes) -> dict[str, dict[str, object]]:
    """Header entries as contracts.safetensors_header has checked them (the offsets do not matter here)."""
    return {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}


def pair(weight: tuple[int, ...], rank: int) -> tuple[list[int], list[int]]:
    """down and up shapes that fit a layer: Linear [r, in] / [out, r], Conv2d [r, in, kh, kw] / [out, r, 1, 1]."""
    return [rank, *weight[1:]], [weight[0], rank, *([1, 1] if len(weight) == 4 else [])]


def dotted(component: str, path: str, weight: tuple[int, ...], rank: int, down: str, up: str) -> Shapes:
    down_shape, up_shape = pair(weight, rank)
    return {f"{component}.{path}.{down}": down_shape, f"{component}.{path}.{up}": up_shape}


def kohya(flat: str, weight: tuple[int, ...], rank: int) -> Shapes:
    down_shape, up_shape = pair(weight, rank)
    return {f"{flat}.lora_down.weight": down_shape, f"{flat}.lora_up.weight": up_shape, f"{flat}.alpha": []}


def refusal_by(table: TargetTable, shapes: Shapes) -> LoraRejectedError:
    with pytest.raises(LoraRejectedError) as caught:
        check_lora_tensors(entries(shapes), table)
    return caught.value


def refusal(shapes: Shapes) -> LoraRejectedError:
    return refusal_by(SDXL, shapes)


def test_a_full_size_attention_lora_in_diffusers_layout_is_summarised() -> None:
    shapes: Shapes = {}
    for path in ATTENTION:
        shapes |= dotted("unet", path, UNET[path], 8, "lora_A.weight", "lora_B.weight")

    summary = check_lora_tensors(entries(shapes), SDXL)

    assert summary == LoraSummary(
        rank=8,
        ranks=(8,),
        alpha=None,
        alpha_layers=0,
        layer_count=560,
        components=("unet",),
        target_modules=("to_k", "to_out.0", "to_q", "to_v"),
    )
    assert json.loads(summary.model_dump_json())["target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]


@pytest.mark.parametrize(
    ("down", "up"),
    [("lora.down.weight", "lora.up.weight"), ("lora_linear_layer.down.weight", "lora_linear_layer.up.weight")],
)
def test_the_older_diffusers_suffixes_are_read(down: str, up: str) -> None:
    path = "mid_block.attentions.0.proj_out"
    layers = check_lora_layers(entries(dotted("unet", path, UNET[path], 4, down, up)), SDXL)
    assert [(layer.component, layer.module_path, layer.rank) for layer in layers] == [("unet", path, 4)]


def test_the_attention_processor_layout_maps_to_out_lora_to_to_out_0() -> None:
    block = "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.processor"
    shapes = {
        f"{block}.to_out_lora.down.weight": [2, 1280],
        f"{block}.to_out_lora.up.weight": [1280, 2],
        f"{block}.to_k_lora.down.weight": [2, 2048],
        f"{block}.to_k_lora.up.weight": [1280, 2],
    }
    layers = check_lora_layers(entries(shapes), SDXL)
    base = "down_blocks.2.attentions.1.transformer_blocks.9.attn2"
    assert [layer.module_path for layer in layers] == [f"{base}.to_k", f"{base}.to_out.0"]


def test_kohya_keys_with_diffusers_block_names_and_alphas() -> None:
    shapes: Shapes = {}
    for path in ATTENTION:
        shapes |= kohya("lora_unet_" + path.replace(".", "_"), UNET[path], 16)
    alphas = {name: 8.0 for name in shapes if name.endswith(".alpha")}
    alphas[min(alphas)] = 1.0  # one odd alpha: the summary reports the most common one

    summary = check_lora_tensors(entries(shapes), SDXL, alpha_values=alphas)

    assert (summary.layer_count, summary.rank, summary.alpha, summary.alpha_layers) == (560, 16, 8.0, 560)
    assert check_lora_tensors(entries(shapes), SDXL).alpha is None  # the header alone holds no alpha values


# kohya SDXL trainers write the SGM UNet's names; each block kind, and where diffusers puts it.
SGM_NAMES = {
    "input_blocks_0_0": "conv_in",
    "time_embed_0": "time_embedding.linear_1",
    "time_embed_2": "time_embedding.linear_2",
    "label_emb_0_0": "add_embedding.linear_1",
    "label_emb_0_2": "add_embedding.linear_2",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_2_0_emb_layers_1": "down_blocks.0.resnets.1.time_emb_proj",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_4_1_proj_in": "down_blocks.1.attentions.0.proj_in",
    "input_blocks_5_1_transformer_blocks_1_attn1_to_q": "down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_q",
    "input_blocks_8_1_transformer_blocks_9_ff_net_2": "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
    "middle_block_0_out_layers_3": "mid_block.resnets.0.conv2",
    "middle_block_1_transformer_blocks_0_attn2_to_out_0": "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
    "output_blocks_0_0_skip_connection": "up_blocks.0.resnets.0.conv_shortcut",
    "output_blocks_2_1_proj_out": "up_blocks.0.attentions.2.proj_out",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_4_1_transformer_blocks_1_ff_net_2": "up_blocks.1.attentions.1.transformer_blocks.1.ff.net.2",
    "output_blocks_8_0_in_layers_2": "up_blocks.2.resnets.2.conv1",
    "out_2": "conv_out",
}


def test_kohya_keys_with_sgm_block_names_reach_the_diffusers_layers() -> None:
    shapes: Shapes = {}
    for sgm, path in SGM_NAMES.items():
        shapes |= kohya(f"lora_unet_{sgm}", UNET[path], 4)

    layers = check_lora_layers(entries(shapes), SDXL)

    assert sorted(layer.module_path for layer in layers) == sorted(SGM_NAMES.values())
    assert all(layer.alpha_key is not None for layer in layers)


@pytest.mark.parametrize("sgm", ["input_blocks_1_2_conv", "middle_block_3_proj_in", "input_blocks_1_0_in_layers_0"])
def test_sgm_names_of_no_linear_or_conv_layer_are_refused(sgm: str) -> None:
    shapes = kohya(f"lora_unet_{sgm}", (320, 320), 4)
    assert refusal(shapes).reason is LoraRejectReason.WRONG_ARCHITECTURE


@pytest.mark.parametrize("prefix", ["text_model.", ""])
def test_text_encoder_loras_with_and_without_text_model(prefix: str) -> None:
    te2 = SDXL.components["text_encoder_2"]
    layers = [
        ("text_encoder", prefix + "encoder.layers.3.self_attn.q_proj", (768, 768)),
        ("text_encoder", prefix + "encoder.layers.11.mlp.fc2", (768, 3072)),
        ("text_encoder_2", prefix + "encoder.layers.31.mlp.fc1", (5120, 1280)),
        ("text_encoder_2", "text_projection", te2["text_projection"]),
    ]
    shapes: Shapes = {}
    for component, path, weight in layers:
        shapes |= dotted(component, path, weight, 4, "lora_A.weight", "lora_B.weight")

    summary = check_lora_tensors(entries(shapes), SDXL)

    assert summary.components == ("text_encoder", "text_encoder_2")
    assert summary.target_modules == ("fc1", "fc2", "q_proj", "text_projection")
    assert summary.layer_count == 4


def test_kohya_text_encoder_keys_of_both_encoders() -> None:
    shapes = kohya("lora_te1_text_model_encoder_layers_0_self_attn_k_proj", (768, 768), 2)
    shapes |= kohya("lora_te2_text_model_encoder_layers_0_mlp_fc2", (1280, 5120), 2)
    shapes |= kohya("lora_unet_conv_in", UNET["conv_in"], 2)
    layers = check_lora_layers(entries(shapes), SDXL)
    assert [(layer.component, layer.module_path) for layer in layers] == [
        ("text_encoder", "encoder.layers.0.self_attn.k_proj"),
        ("text_encoder_2", "encoder.layers.0.mlp.fc2"),
        ("unet", "conv_in"),
    ]


def test_kohya_keys_beside_keys_of_another_layout_are_refused() -> None:
    shapes = kohya("lora_te1_text_model_encoder_layers_0_self_attn_k_proj", (768, 768), 2)
    shapes |= dotted("unet", "conv_in", UNET["conv_in"], 2, "lora_A.weight", "lora_B.weight")
    error = refusal(shapes)
    assert error.reason is LoraRejectReason.UNSUPPORTED_FORMAT
    assert "lora_te1_text_model_encoder_layers_0_self_attn_k_proj" in str(error)


def test_conv_layers_take_4d_downs_and_2d_or_4d_ups_as_the_worker_does() -> None:
    path = "down_blocks.0.resnets.0.conv1"  # weight [320, 320, 3, 3]
    shapes = {f"unet.{path}.lora_A.weight": [4, 320, 3, 3], f"unet.{path}.lora_B.weight": [320, 4]}
    assert check_lora_tensors(entries(shapes), SDXL).target_modules == ("conv1",)
    shapes[f"unet.{path}.lora_A.weight"] = [4, 320]
    assert refusal(shapes).reason is LoraRejectReason.SHAPE_MISMATCH


def test_a_header_from_real_bytes_is_checked() -> None:
    path = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"
    data = safetensors_bytes(
        {f"unet.{path}.lora_A.weight": ("F16", [1, 640]), f"unet.{path}.lora_B.weight": ("F16", [640, 1])},
        metadata={"format": "pt"},
    )
    length = header_length(data[:HEADER_LENGTH_BYTES], len(data))
    header = data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length]
    check_header(header, len(data))
    parsed = json.loads(header)
    parsed.pop("__metadata__")
    assert check_lora_tensors(parsed, SDXL).ranks == (1,)


SD15_IN_SDXL_NAMES = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
REFUSED: dict[str, tuple[Shapes, LoraRejectReason]] = {
    "sd15 layer SDXL lacks": (
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 768],
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": [320, 4],
        },
        LoraRejectReason.WRONG_ARCHITECTURE,
    ),
    "sd15 shapes in a layer SDXL has": (
        {f"{SD15_IN_SDXL_NAMES}.lora_A.weight": [4, 768], f"{SD15_IN_SDXL_NAMES}.lora_B.weight": [640, 4]},
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "flux diffusers": (
        {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": [4, 3072],
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": [3072, 4],
        },
        LoraRejectReason.WRONG_ARCHITECTURE,
    ),
    "flux kohya (lora_transformer_)": (
        kohya("lora_transformer_double_blocks_0_img_attn_qkv", (9216, 3072), 4),
        LoraRejectReason.WRONG_ARCHITECTURE,
    ),
    "flux kohya (lora_unet_)": (
        kohya("lora_unet_double_blocks_0_img_attn_qkv", (9216, 3072), 4),
        LoraRejectReason.WRONG_ARCHITECTURE,
    ),
    "sd3 diffusers": (
        dotted("transformer", "transformer_blocks.0.attn.to_q", (1536, 1536), 4, "lora_A.weight", "lora_B.weight"),
        LoraRejectReason.WRONG_ARCHITECTURE,
    ),
    "vae component": (
        dotted("vae", "decoder.conv_in", (512, 4, 3, 3), 4, "lora_A.weight", "lora_B.weight"),
        LoraRejectReason.WRONG_ARCHITECTURE,
    ),
    "lycoris loha over the wrong width": (
        {
            f"lora_unet_down_blocks_1_attentions_0_proj_in.{part}": [4, 640]
            for part in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        }
        | {"lora_unet_down_blocks_1_attentions_0_proj_in.alpha": []},
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "lycoris lokr factors that multiply to another shape": (
        {
            "lora_unet_down_blocks_1_attentions_0_proj_in.lokr_w1": [8, 8],
            "lora_unet_down_blocks_1_attentions_0_proj_in.lokr_w2": [80, 90],
        },
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "lycoris ia3": (
        {
            "lora_unet_down_blocks_1_attentions_0_proj_in.weight": [640],
            "lora_unet_down_blocks_1_attentions_0_proj_in.on_input": [],
        },
        LoraRejectReason.UNSUPPORTED_FORMAT,
    ),
    "kohya dora of another width": (
        kohya("lora_unet_down_blocks_1_attentions_0_proj_in", (640, 640), 4)
        | {"lora_unet_down_blocks_1_attentions_0_proj_in.dora_scale": [1, 320]},
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "peft dora with two magnitudes": (
        dotted("unet", "down_blocks.1.attentions.0.proj_in", (640, 640), 4, "lora_A.weight", "lora_B.weight")
        | {
            "unet.down_blocks.1.attentions.0.proj_in.lora_magnitude_vector": [640],
            "unet.down_blocks.1.attentions.0.proj_in.dora_scale": [640, 1],
        },
        LoraRejectReason.UNSUPPORTED_FORMAT,
    ),
    "full checkpoint": (
        {"model.weight": [4, 4], "unet.conv_in.weight": [320, 4, 3, 3]},
        LoraRejectReason.NO_LORA_WEIGHTS,
    ),
    "alphas only": ({"unet.conv_in.alpha": []}, LoraRejectReason.NO_LORA_WEIGHTS),
    "a plain weight beside a lora": (
        dotted("unet", "conv_out", (4, 320, 3, 3), 4, "lora_A.weight", "lora_B.weight")
        | {"unet.conv_out.weight": [4, 320, 3, 3]},
        LoraRejectReason.UNSUPPORTED_FORMAT,
    ),
    "down without up": ({"unet.conv_in.lora_A.weight": [4, 4, 3, 3]}, LoraRejectReason.INCOMPLETE_LAYER),
    "up without down": (
        {
            "unet.conv_in.lora_A.weight": [4, 4, 3, 3],
            "unet.conv_in.lora_B.weight": [320, 4, 1, 1],
            "unet.conv_out.lora_B.weight": [4, 4],
        },
        LoraRejectReason.INCOMPLETE_LAYER,
    ),
    "kohya alpha without weights": (
        kohya("lora_unet_conv_in", (320, 4, 3, 3), 4) | {"lora_unet_conv_out.alpha": []},
        LoraRejectReason.INCOMPLETE_LAYER,
    ),
    "rank 2000": (
        dotted("unet", "conv_in", (320, 4, 3, 3), 2000, "lora_A.weight", "lora_B.weight"),
        LoraRejectReason.RANK_TOO_LARGE,
    ),
    "rank 0": (
        dotted("unet", "conv_in", (320, 4, 3, 3), 0, "lora_A.weight", "lora_B.weight"),
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "up of another rank": (
        {"unet.conv_out.lora_A.weight": [4, 320, 3, 3], "unet.conv_out.lora_B.weight": [4, 8, 1, 1]},
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "alpha of two numbers": (
        kohya("lora_unet_conv_in", (320, 4, 3, 3), 4) | {"lora_unet_conv_in.alpha": [2]},
        LoraRejectReason.SHAPE_MISMATCH,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_foreign_and_broken_files_are_refused_with_their_reason(case: str) -> None:
    shapes, reason = REFUSED[case]
    error = refusal(shapes)
    assert error.reason is reason
    assert error.reason == reason.value
    assert isinstance(error, ValueError)


def test_a_shape_mismatch_names_the_layer_the_shapes_and_the_layer_weight() -> None:
    message = str(refusal(REFUSED["sd15 shapes in a layer SDXL has"][0]))
    assert SD15_IN_SDXL_NAMES.removeprefix("unet.") in message
    assert "down [4, 768]" in message and "up [640, 4]" in message and "layer weight [640, 2048]" in message


def test_a_refusal_names_only_the_first_offending_key_truncated() -> None:
    long_names = {f"transformer.{'x' * 300}.{i}.lora_A.weight": [1, 4] for i in range(50)}
    error = refusal(long_names | {name.replace("lora_A", "lora_B"): [4, 1] for name in long_names})
    assert error.reason is LoraRejectReason.WRONG_ARCHITECTURE
    assert len(str(error)) < 250
    assert str(error).count("transformer.") == 1


def test_the_rank_limit_is_inclusive() -> None:
    shapes = dotted("unet", "conv_in", (320, 4, 3, 3), MAX_RANK, "lora_A.weight", "lora_B.weight")
    assert check_lora_tensors(entries(shapes), SDXL).rank == MAX_RANK


@pytest.mark.parametrize("base_model", KNOWN_BASE_MODELS)
def test_every_layer_of_every_table_is_reachable_by_its_kohya_name(base_model: str) -> None:
    table = load_target_table(base_model)
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_text_model_", "text_encoder_2": "lora_te2_text_model_"}
    shapes: Shapes = {}
    expected = set()
    for component, layers in table.components.items():
        for path, weight in layers.items():
            # add_embedding is reachable only by its SGM name (label_emb_0_N): diffusers mangles the other spelling.
            if not path.startswith("add_embedding."):
                shapes |= kohya(prefixes[component] + path.replace(".", "_"), weight, 1)
                expected.add((component, path))
    assert {(layer.component, layer.module_path) for layer in check_lora_layers(entries(shapes), table)} == expected
    add_embedding = kohya("lora_unet_add_embedding_linear_1", table.components["unet"]["add_embedding.linear_1"], 1)
    assert refusal_by(table, add_embedding).reason is LoraRejectReason.WRONG_ARCHITECTURE


def test_tables_are_known_cached_and_unknown_names_are_a_key_error() -> None:
    assert set(KNOWN_BASE_MODELS) == {"sdxl-base-1.0", "tiny-sdxl-random"}
    assert load_target_table("sdxl-base-1.0") is SDXL
    assert {name: len(layers) for name, layers in SDXL.components.items()} == {
        "text_encoder": 72,
        "text_encoder_2": 193,
        "unet": 794,
    }
    with pytest.raises(KeyError, match="sd15"):
        load_target_table("sd15")
