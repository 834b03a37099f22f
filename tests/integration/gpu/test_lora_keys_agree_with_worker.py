"""Identity's header-only LoRA check (contracts/lora_keys.py) and the worker's plan accept the same files, per layer.

The worker (gpu/engine/lora/plan.py, through diffusers' converters) is the authority. Where the two differ, the case is
listed
in KNOWN_GAPS with the reason, and the tests fail when the list stops being exactly true.
"""

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from contracts.lora_keys import MAX_RANK, LoraRejectedError, LoraRejectReason, check_lora_layers, check_lora_tensors
from contracts.lora_targets import TargetTable, load_target_table
from contracts.safetensors_header import HEADER_LENGTH_BYTES, header_length
from gpu.engine.errors import WorkerFailure
from gpu.engine.lora.plan import plan_lora
from gpu.tiny.lora import write_lora
from gpu.tiny.model import TINY_BASE_MODEL
from gpu.tools.lora_targets import BUILDERS, SDXL_BASE_MODEL
from tests.support.bad_loras import without_lora_keys
from tests.support.engine import weight_of
from tests.support.lora_formats import dora_file, locon_file, loha_file, lokr_file

DORA_LAYERS = (
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("unet", "down_blocks.1.resnets.0.conv1"),
    ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_k"),
    ("text_encoder", "encoder.layers.0.mlp.fc2"),
)

Layers = list[tuple[str, str, int]]  # (component, module path without `text_model.`, rank), sorted
Entries = dict[str, dict[str, object]]
Sdxl = tuple[SimpleNamespace, TargetTable]  # the full SDXL's modules on the meta device, and its table


def header_entries(data: bytes) -> Entries:
    """What identity sees of a file: its safetensors header, without `__metadata__`."""
    length = header_length(data[:HEADER_LENGTH_BYTES], len(data))
    parsed: Entries = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    parsed.pop("__metadata__", None)
    return parsed


def shape_entries(state: dict[str, torch.Tensor]) -> Entries:
    """Header entries for tensors that cannot be saved (meta): names and shapes are all the check reads."""
    return {name: {"dtype": "F32", "shape": list(t.shape), "data_offsets": [0, 0]} for name, t in state.items()}


def worker_verdict(pipeline: Any, state: dict[str, torch.Tensor]) -> Layers | None:
    try:
        plan = plan_lora(pipeline, dict(state))
    except WorkerFailure:
        return None
    return sorted((d.component, d.module_path.removeprefix("text_model."), d.down.shape[0]) for d in plan.deltas)


def worker_layers(pipeline: Any, state: dict[str, torch.Tensor]) -> set[tuple[str, str]] | str:
    """The layers the worker's plan changes (grouped deltas and per-layer steps), or its refusal's reason code."""
    try:
        plan = plan_lora(pipeline, dict(state))
    except WorkerFailure as failure:
        return str(failure.details.get("reason", failure.message))
    keys = [(d.component, d.module_path) for d in plan.deltas] + [step.key for step in plan.steps]
    return {(component, path.removeprefix("text_model.")) for component, path in keys}


def checker_layers(data: bytes, table: TargetTable) -> set[tuple[str, str]] | str:
    try:
        layers = check_lora_layers(header_entries(data), table)
    except LoraRejectedError as error:
        return error.reason
    return {(layer.component, layer.module_path) for layer in layers}


def checker_verdict(entries: Entries, table: TargetTable) -> Layers | None:
    try:
        layers = check_lora_layers(entries, table)
    except LoraRejectedError:
        return None
    return sorted((layer.component, layer.module_path, layer.rank) for layer in layers)


def sgm_path(path: str, layers_per_block: int) -> str:
    """The SGM UNet's name (what kohya SDXL trainers write) of a diffusers UNet layer: the inverse of diffusers' map."""
    whole = {
        "conv_in": "input_blocks.0.0",
        "conv_out": "out.2",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    if path in whole:
        return whole[path]
    resnet = {
        "conv1": "in_layers.2",
        "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1",
        "conv_shortcut": "skip_connection",
    }
    block, number, kind, index, *tail = path.split(".")
    rest = ".".join(tail)
    rest = resnet.get(rest, rest) if kind == "resnets" else rest
    inner = {"resnets": 0, "attentions": 1, "upsamplers": 2}.get(kind)
    per_block = layers_per_block + 1
    if block == "mid_block":  # here `number` is the kind and `kind` the index
        part = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(number, kind)]
        rest = ".".join([index, *tail])
        return f"middle_block.{part}.{resnet.get(rest, rest) if number == 'resnets' else rest}"
    if block == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{1 + int(number) * per_block + layers_per_block}.0.op"
        return f"input_blocks.{1 + int(number) * per_block + int(index)}.{inner}.{rest}"
    layer = layers_per_block if kind == "upsamplers" else int(index)
    return f"output_blocks.{int(number) * per_block + layer}.{inner}.{rest}"


KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
_ATTENTION = re.compile(r"(?P<block>.*\.attn[12])\.(?P<proj>to_q|to_k|to_v|to_out)(?:\.0)?$")


def layouts(
    component: str, path: str, weight: tuple[int, ...], rank: int, per_block: int
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """One layer's LoRA in every layout the worker reads: (layout, state dict of meta tensors and a float alpha)."""
    down = torch.empty((rank, *weight[1:]), device="meta")
    up = torch.empty((weight[0], rank, *([1, 1] if len(weight) == 4 else [])), device="meta")
    alpha = torch.tensor(float(rank) / 2)
    te_path = f"text_model.{path}" if component != "unet" and path != "text_projection" else path
    yield "diffusers", {f"{component}.{te_path}.lora_A.weight": down, f"{component}.{te_path}.lora_B.weight": up}
    yield (
        "diffusers-old",
        {f"{component}.{te_path}.lora.down.weight": down, f"{component}.{te_path}.lora.up.weight": up},
    )
    if component != "unet":
        # transformers 5 names CLIPTextModel's layers without `text_model.`; peft LoRAs trained on it do too.
        yield (
            "diffusers-no-text-model",
            {f"{component}.{path}.lora_A.weight": down, f"{component}.{path}.lora_B.weight": up},
        )
    flat = KOHYA_PREFIX[component] + te_path.replace(".", "_")
    yield "kohya", {f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up, f"{flat}.alpha": alpha}
    if component == "unet":
        flat = "lora_unet_" + sgm_path(path, per_block).replace(".", "_")
        yield "kohya-sgm", {f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up, f"{flat}.alpha": alpha}
        if attention := _ATTENTION.fullmatch(path):
            processor = f"unet.{attention['block']}.processor.{attention['proj']}_lora"
            yield "processor", {f"{processor}.down.weight": down, f"{processor}.up.weight": up}


# Files the check accepts and the worker refuses (never the reverse): (layout, component, path) → why.
# Empty since the worker reads kohya text-encoder attention and adds `text_model.` where a model has it;
# a gap found later goes here with its reason, and the test below fails once it is closed.
KNOWN_GAPS: dict[str, Callable[[str, str, str], bool]] = {}


@pytest.fixture(scope="module")
def sdxl() -> Sdxl:
    """The full SDXL UNet and text encoders on the meta device (no memory), and the committed table."""
    with torch.device("meta"):
        models = BUILDERS[SDXL_BASE_MODEL]()
    return SimpleNamespace(**models), load_target_table(SDXL_BASE_MODEL)


def test_every_sdxl_layer_in_every_layout_gets_the_same_verdict_and_module(sdxl: Sdxl) -> None:
    pipeline, table = sdxl
    per_block = pipeline.unet.config.layers_per_block
    disagreements: dict[str, set[tuple[str, str, str]]] = {}
    cases = 0
    for component, layer_shapes in table.components.items():
        for number, (path, weight) in enumerate(layer_shapes.items()):
            rank = 1 + number % 3
            for layout, state in layouts(component, path, weight, rank, per_block):
                cases += 1
                worker, checker = worker_verdict(pipeline, state), checker_verdict(shape_entries(state), table)
                if worker is not None:
                    assert worker == [(component, path, rank)], (layout, path)
                    assert checker == worker, f"the check refuses what the worker accepts: {layout} {path}"
                elif checker is not None:
                    assert checker == [(component, path, rank)], (layout, path)
                    gap = next((name for name, applies in KNOWN_GAPS.items() if applies(layout, component, path)), "")
                    disagreements.setdefault(gap, set()).add((layout, component, path))
    assert cases > 4000
    assert "" not in disagreements, f"the worker refuses, the check accepts: {sorted(disagreements[''])[:5]}"
    # Each known gap still exists; when the worker closes one, drop it from KNOWN_GAPS.
    assert set(disagreements) == set(KNOWN_GAPS)


def test_a_whole_kohya_sgm_file_over_the_full_sdxl_unet_maps_every_key_alike(sdxl: Sdxl) -> None:
    pipeline, table = sdxl
    unet = table.components["unet"]
    state: dict[str, torch.Tensor] = {}
    for path, weight in unet.items():
        state |= dict(layouts("unet", path, weight, 4, 2))["kohya-sgm"]
    assert any("input_blocks" in key for key in state) and not any("down_blocks" in key for key in state)

    worker = worker_verdict(pipeline, state)
    assert worker is not None and len(worker) == len(unet) == 794
    assert checker_verdict(shape_entries(state), table) == worker


def test_wrong_shapes_and_ranks_are_refused_by_both(sdxl: Sdxl) -> None:
    pipeline, table = sdxl
    for component, layer_shapes in table.components.items():
        for path, weight in layer_shapes.items():
            wider = (weight[0], weight[1] + 1, *weight[2:])  # an SD1.5-like input width
            _, state = next(layouts(component, path, wider, 2, 2))
            assert worker_verdict(pipeline, state) is None
            with pytest.raises(LoraRejectedError) as caught:
                check_lora_layers(shape_entries(state), table)
            assert caught.value.reason is LoraRejectReason.SHAPE_MISMATCH
    _, state = next(layouts("unet", "conv_in", table.components["unet"]["conv_in"], MAX_RANK + 1, 2))
    assert worker_verdict(pipeline, state) is None
    with pytest.raises(LoraRejectedError) as caught:
        check_lora_layers(shape_entries(state), table)
    assert caught.value.reason is LoraRejectReason.RANK_TOO_LARGE


def test_dora_on_a_layer_the_worker_can_read_back_is_refused_or_accepted_by_both(sdxl: Sdxl) -> None:
    pipeline, table = sdxl
    state = dict(layouts("unet", "conv_in", table.components["unet"]["conv_in"], 4, 2))["kohya"]
    # conv_in is [320, 4, 3, 3]: a magnitude per input channel (LyCORIS wd_on_out=False) fits, one of 5 does not.
    state["lora_unet_conv_in.dora_scale"] = torch.empty((1, 5, 1, 1), device="meta")
    assert worker_verdict(pipeline, state) is None
    with pytest.raises(LoraRejectedError) as caught:
        check_lora_layers(shape_entries(state), table)
    assert caught.value.reason is LoraRejectReason.SHAPE_MISMATCH
    state["lora_unet_conv_in.dora_scale"] = torch.empty((1, 4, 1, 1), device="meta")
    layers = check_lora_layers(shape_entries(state), table)
    assert [(layer.module_path, layer.dora) for layer in layers] == [("conv_in", "in")]


# --- real files for the tiny model, as the worker loads them ---

TINY = load_target_table(TINY_BASE_MODEL)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model_dir: Path) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def te_lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return load_file(write_lora(tmp_path_factory.mktemp("te") / "te.safetensors", seed=5, text_encoders=True))


def with_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """text_encoder keys as LoRAs trained with transformers 4 name them (`text_model.` first)."""
    return {re.sub(r"^text_encoder\.(?!text_model\.)", "text_encoder.text_model.", k): v for k, v in state.items()}


def peft_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' saved layout (`lora.down`, `lora_linear_layer.down`) in peft's (`lora_A`, `lora_B`)."""
    sides = {"down": "lora_A", "up": "lora_B"}
    return {
        re.sub(r"\.lora(?:_linear_layer)?\.(down|up)\.weight$", lambda m: f".{sides[m[1]]}.weight", k): v
        for k, v in state.items()
    }


def kohya_state(diffusers_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """diffusers' own peft → kohya converter, with float alphas (it writes int64 ones, which no header check takes)."""
    kohya = convert_state_dict_to_kohya(peft_state(with_text_model(diffusers_state)))
    return {k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}


# Each tiny-model file, and a key part that shows it is in the layout its name says.
TINY_CASES = {
    "diffusers unet": "unet.down_blocks.",
    "diffusers unet and text encoders": ".lora_linear_layer.down.weight",
    "peft unet and text encoders": "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight",
    "text_encoder keys with text_model.": "text_encoder.text_model.encoder.",
    "kohya unet (diffusers names)": "lora_unet_down_blocks_",
    "kohya unet (SGM names)": "lora_unet_input_blocks_",
    "attention processor layout": ".processor.to_out_lora.down.weight",
}


@pytest.fixture(scope="module")
def tiny_states(
    te_lora: dict[str, torch.Tensor], lora_files: dict[str, Path], tiny_pipeline: Any
) -> dict[str, dict[str, torch.Tensor]]:
    unet_only = load_file(lora_files["a"])
    unet_kohya = kohya_state(unet_only, alpha=2.0)
    # diffusers' converter turns kohya attention keys into the attention-processor layout.
    processor, _ = StableDiffusionXLPipeline.lora_state_dict(dict(unet_kohya), unet_config=tiny_pipeline.unet.config)
    flat_paths = {"lora_unet_" + path.replace(".", "_"): path for path in TINY.components["unet"]}
    sgm = {}
    for key, tensor in unet_kohya.items():
        flat, _, side = key.partition(".")
        sgm["lora_unet_" + sgm_path(flat_paths[flat], 2).replace(".", "_") + "." + side] = tensor
    return {
        "diffusers unet": unet_only,
        "diffusers unet and text encoders": te_lora,
        "peft unet and text encoders": peft_state(te_lora),
        "text_encoder keys with text_model.": with_text_model(te_lora),
        "kohya unet (diffusers names)": unet_kohya,
        "kohya unet (SGM names)": sgm,
        "attention processor layout": {k: v.contiguous() for k, v in processor.items() if not k.endswith(".alpha")},
    }


@pytest.mark.parametrize("case", sorted(TINY_CASES))
def test_tiny_model_files_agree(case: str, tiny_pipeline: Any, tiny_states: dict[str, dict[str, torch.Tensor]]) -> None:
    state = tiny_states[case]
    assert any(TINY_CASES[case] in key for key in state), f"{case} is not in the layout it names"
    data = save_safetensors(state)
    worker = worker_verdict(tiny_pipeline, state)
    assert worker, f"the worker refused {case}"
    assert checker_verdict(header_entries(data), TINY) == worker
    if case.startswith("kohya"):
        alphas = {name: float(t) for name, t in state.items() if name.endswith(".alpha")}
        summary = check_lora_tensors(header_entries(data), TINY, alpha_values=alphas)
        assert (summary.alpha, summary.alpha_layers, summary.rank) == (2.0, len(worker), 4)
        assert {d.alpha_scale for d in plan_lora(tiny_pipeline, state).deltas} == {2.0 / 4}


def test_kohya_text_encoder_attention_loads_in_the_worker_as_the_check_says(
    tiny_pipeline: Any, te_lora: dict[str, torch.Tensor]
) -> None:
    state = kohya_state(te_lora, alpha=4.0)
    assert any(k.startswith("lora_te1_text_model_") and "self_attn" in k for k in state)
    worker = worker_verdict(tiny_pipeline, state)
    layers = checker_verdict(header_entries(save_safetensors(state)), TINY)
    expected = {(c, p.removeprefix("text_model."), r) for c, p, r in worker_verdict(tiny_pipeline, te_lora) or []}
    assert worker is not None and {(c, p.removeprefix("text_model."), r) for c, p, r in worker} == expected
    assert layers is not None and set(layers) == expected


@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        ("sd15", {LoraRejectReason.WRONG_ARCHITECTURE, LoraRejectReason.SHAPE_MISMATCH}),
        ("no lora keys", {LoraRejectReason.NO_LORA_WEIGHTS}),
        ("loha", {LoraRejectReason.SHAPE_MISMATCH}),
    ],
)
def test_foreign_files_are_refused_by_both(
    case: str, reasons: set[LoraRejectReason], tiny_pipeline: Any, lora_files: dict[str, Path]
) -> None:
    loha = {f"lora_unet_conv_in.hada_{part}": torch.ones(4, 4) for part in ("w1_a", "w1_b", "w2_a", "w2_b")}
    data = {
        "sd15": lora_files["sd15"].read_bytes(),
        "no lora keys": without_lora_keys(),
        "loha": save_safetensors(loha | {"lora_unet_conv_in.alpha": torch.tensor(4.0)}),
    }[case]
    with pytest.raises(WorkerFailure):
        plan_lora(tiny_pipeline, load_safetensors(data))
    with pytest.raises(LoraRejectedError) as caught:
        check_lora_tensors(header_entries(data), TINY)
    assert caught.value.reason in reasons


def format_cases(pipeline: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Every LoCon/LoHa/LoKr/DoRA test file of the tiny model, and malformed variants of them."""
    weights = {key: pipeline_weight(pipeline, *key) for key in DORA_LAYERS}
    files = {"loha": loha_file(), "lokr": lokr_file(), "locon": locon_file(), "dora": dora_file(weights)}
    cases = {name: lora.state() for name, lora in files.items()}
    loha = cases["loha"]
    first = next(name for name in sorted(loha) if name.endswith(".hada_w1_a"))
    stem = first.removesuffix(".hada_w1_a")
    lokr = cases["lokr"]
    whole = next(name for name in sorted(lokr) if name.endswith(".lokr_w2"))
    return cases | {
        "loha missing a factor": {k: v for k, v in loha.items() if k != f"{stem}.hada_w2_b"},
        "loha factor transposed": loha | {first: loha[first].t().contiguous()},
        "loha rank over the size bound": loha
        | {f"{stem}.{part}": torch.zeros(shape) for part, shape in _loha_shapes(loha[first].shape[0], 600).items()},
        "lokr factor of another shape": lokr | {whole: torch.zeros(16, 15)},
        "loha and lora in one layer": loha | {f"{stem}.lora_down.weight": torch.zeros(2, 64)},
        "lokr core beside a whole factor": lokr | {whole.replace("lokr_w2", "lokr_t2"): torch.zeros(2, 2, 1, 1)},
        "unknown lokr part": lokr | {whole.replace("lokr_w2", "lokr_t1"): torch.zeros(2, 2)},
    }


def _loha_shapes(out: int, rank: int) -> dict[str, tuple[int, int]]:
    return {"hada_w1_a": (out, rank), "hada_w1_b": (rank, out), "hada_w2_a": (out, rank), "hada_w2_b": (rank, out)}


def pipeline_weight(pipeline: Any, component: str, path: str) -> torch.Tensor:
    return weight_of(pipeline, component, path).detach().clone()


FORMAT_VERDICTS = {
    "loha missing a factor": "incomplete_layer",
    "loha factor transposed": "shape_mismatch",
    "loha rank over the size bound": "rank_too_large",
    "lokr factor of another shape": "shape_mismatch",
    "loha and lora in one layer": "unsupported_format",
    "lokr core beside a whole factor": "unsupported_format",
    "unknown lokr part": "unsupported_format",
}


def test_format_files_get_the_same_layers_or_the_same_reason_in_both(tiny_pipeline: Any) -> None:
    cases = format_cases(tiny_pipeline)
    assert set(FORMAT_VERDICTS) < set(cases)
    for name, state in cases.items():
        worker, checker = worker_layers(tiny_pipeline, state), checker_layers(save_safetensors(state), TINY)
        assert worker == checker, name
        if name in FORMAT_VERDICTS:
            assert checker == FORMAT_VERDICTS[name], name
        else:
            assert isinstance(checker, set) and len(checker) >= 4, name
