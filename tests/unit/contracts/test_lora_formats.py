"""The torch-free format check: LoCon CP, LoHa, LoKr and DoRA shapes as LyCORIS and peft write them fit every SDXL
layer they can target, and each malformed variant is refused with its reason."""

from __future__ import annotations

import pytest

from contracts.lora_formats import MAX_RANK, AdapterKind, DoraAxis, layer_format
from contracts.lora_keys import LoraRejectedError, LoraRejectReason, check_lora_layers, check_lora_tensors
from contracts.lora_targets import load_target_table

SDXL = load_target_table("sdxl-base-1.0")
UNET = SDXL.components["unet"]
Shapes = dict[str, list[int]]
PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_text_model_", "text_encoder_2": "lora_te2_text_model_"}


def entries(shapes: Shapes) -> dict[str, dict[str, object]]:
    return {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}


def factorization(dimension: int, factor: int) -> tuple[int, int]:
    """LyCORIS' `lycoris/functional/general.py` factorization for a positive factor that divides the dimension."""
    if dimension % factor == 0:
        small, large = sorted((factor, dimension // factor))
        return small, large
    return 1, dimension


def loha(weight: tuple[int, ...], rank: int) -> Shapes:
    fan_in = weight[1] * (weight[2] * weight[3] if len(weight) == 4 else 1)
    return {"hada_w1_a": [weight[0], rank], "hada_w1_b": [rank, fan_in], "hada_w2_a": [weight[0], rank],
            "hada_w2_b": [rank, fan_in], "alpha": []}  # fmt: skip


def lokr(weight: tuple[int, ...], rank: int, factor: int = 8) -> Shapes:
    """LyCORIS LoKr with a whole w1 and a factorized w2 (its default below full dimension)."""
    (a, b), (c, d) = factorization(weight[0], factor), factorization(weight[1], factor)
    kernel = weight[2] * weight[3] if len(weight) == 4 else 1
    return {"lokr_w1": [a, c], "lokr_w2_a": [b, rank], "lokr_w2_b": [rank, d * kernel], "alpha": []}


def named(component: str, path: str, parts: Shapes) -> Shapes:
    stem = PREFIX[component] + path.replace(".", "_")
    return {f"{stem}.{part}": shape for part, shape in parts.items()}


@pytest.mark.parametrize("builder", [loha, lokr], ids=["loha", "lokr"])
def test_every_sdxl_layer_takes_loha_and_lokr(builder: object) -> None:
    assert callable(builder)
    shapes: Shapes = {}
    for component, layers in SDXL.components.items():
        for path, weight in layers.items():
            if not path.startswith("add_embedding."):  # reachable only by its SGM name (test_lora_keys.py)
                shapes |= named(component, path, builder(weight, 4))
    layers_found = check_lora_layers(entries(shapes), SDXL)
    assert len(layers_found) == sum(len(layers) for layers in SDXL.components.values()) - 2
    assert {layer.kind for layer in layers_found} == {AdapterKind.LOHA if builder is loha else AdapterKind.LOKR}
    assert {layer.rank for layer in layers_found} == {4}


def test_cp_cores_on_every_3x3_convolution() -> None:
    shapes: Shapes = {}
    convolutions = [path for path, weight in UNET.items() if weight[2:] == (3, 3)]
    for path in convolutions:
        out, fan_in = UNET[path][:2]
        shapes |= named("unet", path, {"lora_down.weight": [4, fan_in, 1, 1], "lora_mid.weight": [4, 4, 3, 3],
                                       "lora_up.weight": [out, 4, 1, 1]})  # fmt: skip
    layers = check_lora_layers(entries(shapes), SDXL)
    assert len(layers) == len(convolutions) == 40  # conv_in, conv_out, every resnet conv1/conv2, re-samplers
    assert {layer.kind for layer in layers} == {AdapterKind.LOCON_TUCKER}


def test_loha_and_lokr_cp_cores_on_a_convolution() -> None:
    weight = UNET["down_blocks.1.resnets.0.conv1"]  # [640, 320, 3, 3]
    loha_cp = {"hada_t1": [4, 4, 3, 3], "hada_w1_a": [4, 640], "hada_w1_b": [4, 320], "hada_t2": [4, 4, 3, 3],
               "hada_w2_a": [4, 640], "hada_w2_b": [4, 320]}  # fmt: skip
    lokr_cp = {"lokr_w1": [8, 8], "lokr_t2": [4, 4, 3, 3], "lokr_w2_a": [4, 80], "lokr_w2_b": [4, 40]}
    for parts, kind in ((loha_cp, AdapterKind.LOHA_TUCKER), (lokr_cp, AdapterKind.LOKR)):
        found = layer_format("conv1", {p: p for p in parts}, {p: tuple(s) for p, s in parts.items()}, weight)
        assert (found.kind, found.rank, found.alpha_applies) == (kind, 4, True)


def test_lokr_with_whole_factors_ignores_alpha_and_reports_its_kronecker_rank() -> None:
    parts = {"lokr_w1": [8, 8], "lokr_w2": [80, 80], "alpha": []}
    shapes = named("unet", "down_blocks.1.attentions.0.proj_in", parts)  # [640, 640]
    (layer,) = check_lora_layers(entries(shapes), SDXL)
    assert (layer.kind, layer.rank, layer.alpha_key) == (AdapterKind.LOKR, 640, None)
    summary = check_lora_tensors(entries(shapes), SDXL, alpha_values={name: 1.0 for name in shapes})
    assert (summary.alpha, summary.alpha_layers) == (None, 0)


@pytest.mark.parametrize(
    ("path", "magnitude", "part", "axis"),
    [
        ("down_blocks.1.attentions.0.proj_in", [640, 1], "dora_scale", DoraAxis.OUT),
        ("down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k", [1, 2048], "dora_scale", DoraAxis.IN),
        ("down_blocks.1.resnets.0.conv1", [640, 1, 1, 1], "dora_scale", DoraAxis.OUT),
        ("down_blocks.1.resnets.0.conv1", [1, 320, 1, 1], "dora_scale", DoraAxis.IN),
        ("down_blocks.1.attentions.0.proj_in", [640], "lora_magnitude_vector", DoraAxis.OUT),
        ("down_blocks.1.resnets.0.conv1", [1, 640, 1, 1], "lora_magnitude_vector", DoraAxis.OUT),
    ],
)
def test_dora_magnitudes_on_either_axis(path: str, magnitude: list[int], part: str, axis: DoraAxis) -> None:
    weight = UNET[path]
    down = [4, *weight[1:]]
    up = [weight[0], 4, *([1, 1] if len(weight) == 4 else [])]
    if part == "dora_scale":
        shapes = named("unet", path, {"lora_down.weight": down, "lora_up.weight": up, part: magnitude})
    else:
        shapes = {
            f"unet.{path}.lora_A.weight": down,
            f"unet.{path}.lora_B.weight": up,
            f"unet.{path}.{part}": magnitude,
        }
    (layer,) = check_lora_layers(entries(shapes), SDXL)
    assert (layer.kind, layer.dora) == (AdapterKind.LORA, axis)


TO_Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # [640, 640]
REFUSED: dict[str, tuple[Shapes, LoraRejectReason]] = {
    "loha without a factor": ({"hada_w1_a": [640, 4], "hada_w1_b": [4, 640], "hada_w2_a": [640, 4]},
                              LoraRejectReason.INCOMPLETE_LAYER),
    "loha with one cp core": (loha(UNET[TO_Q], 4) | {"hada_t1": [4, 4, 1, 1]}, LoraRejectReason.INCOMPLETE_LAYER),
    "loha cp core on a Linear": (
        {"hada_t1": [4, 4, 1, 1], "hada_w1_a": [4, 640], "hada_w1_b": [4, 640], "hada_t2": [4, 4, 1, 1],
         "hada_w2_a": [4, 640], "hada_w2_b": [4, 640]},
        LoraRejectReason.SHAPE_MISMATCH,
    ),
    "loha of two ranks": (loha(UNET[TO_Q], 4) | {"hada_w2_a": [640, 2], "hada_w2_b": [2, 640]},
                          LoraRejectReason.SHAPE_MISMATCH),
    "loha rank 513 (more numbers than a rank-1024 LoRA)": (loha(UNET[TO_Q], 513), LoraRejectReason.RANK_TOO_LARGE),
    "lokr without w2": ({"lokr_w1": [8, 8]}, LoraRejectReason.INCOMPLETE_LAYER),
    "lokr with w1 and w1_a": (lokr(UNET[TO_Q], 4) | {"lokr_w1_a": [8, 4], "lokr_w1_b": [4, 8]},
                              LoraRejectReason.UNSUPPORTED_FORMAT),
    "lokr factors of another product": ({"lokr_w1": [8, 8], "lokr_w2": [80, 81]}, LoraRejectReason.SHAPE_MISMATCH),
    "lokr of two ranks": ({"lokr_w1_a": [8, 2], "lokr_w1_b": [2, 8], "lokr_w2_a": [80, 4], "lokr_w2_b": [4, 80]},
                          LoraRejectReason.SHAPE_MISMATCH),
    "lokr rank over the maximum": ({"lokr_w1": [8, 8], "lokr_w2_a": [80, 2048], "lokr_w2_b": [2048, 80]},
                                   LoraRejectReason.RANK_TOO_LARGE),
    "lokr cp core on a Linear": ({"lokr_w1": [8, 8], "lokr_t2": [4, 4, 1, 1], "lokr_w2_a": [4, 80],
                                  "lokr_w2_b": [4, 80]}, LoraRejectReason.SHAPE_MISMATCH),
    "lora mid on a Linear": ({"lora_down.weight": [4, 640], "lora_mid.weight": [4, 4, 1, 1],
                              "lora_up.weight": [640, 4]}, LoraRejectReason.SHAPE_MISMATCH),
    "loha beside a lora pair": (loha(UNET[TO_Q], 4) | {"lora_down.weight": [4, 640], "lora_up.weight": [640, 4]},
                                LoraRejectReason.UNSUPPORTED_FORMAT),
    "loha beside lokr": (loha(UNET[TO_Q], 4) | {"lokr_w1": [8, 8], "lokr_w2": [80, 80]},
                         LoraRejectReason.UNSUPPORTED_FORMAT),
    "dora alone": ({"dora_scale": [640, 1]}, LoraRejectReason.NO_LORA_WEIGHTS),
    "dora of another width": (loha(UNET[TO_Q], 4) | {"dora_scale": [320, 1]}, LoraRejectReason.SHAPE_MISMATCH),
    "dora of the wrong rank": (loha(UNET[TO_Q], 4) | {"dora_scale": [640]}, LoraRejectReason.SHAPE_MISMATCH),
    "a LyCORIS part nobody writes": (lokr(UNET[TO_Q], 4) | {"lokr_t1": [4, 4]}, LoraRejectReason.UNSUPPORTED_FORMAT),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_formats_are_refused_with_their_reason(case: str) -> None:
    parts, reason = REFUSED[case]
    with pytest.raises(LoraRejectedError) as caught:
        check_lora_layers(entries(named("unet", TO_Q, parts)), SDXL)
    assert caught.value.reason is reason, str(caught.value)
    if reason is not LoraRejectReason.NO_LORA_WEIGHTS:  # a file-level refusal names no tensor
        assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in caught.value.message


def test_the_size_bound_allows_loha_up_to_rank_512_and_lokr_ranks_up_to_the_maximum() -> None:
    # LoHa's four factors hold 2 r (out + in) numbers: at most a rank-1024 LoRA's 1024 (out + in) means r <= 512.
    assert check_lora_layers(entries(named("unet", TO_Q, loha(UNET[TO_Q], 512))), SDXL)[0].rank == 512
    lokr_max = {"lokr_w1": [2, 2], "lokr_w2_a": [320, MAX_RANK], "lokr_w2_b": [MAX_RANK, 320]}
    assert check_lora_layers(entries(named("unet", TO_Q, lokr_max)), SDXL)[0].rank == MAX_RANK


def test_checking_against_fresh_tables_keeps_a_bounded_index_cache() -> None:
    from contracts.lora_layouts import _flat_paths
    from contracts.lora_targets import TargetTable

    shapes = named("unet", TO_Q, loha(UNET[TO_Q], 4))
    for _ in range(20):  # the worker reads a new table from its pipeline for each file it plans
        check_lora_layers(entries(shapes), TargetTable("fresh", SDXL.components))
    assert _flat_paths.cache_info().currsize <= 8
