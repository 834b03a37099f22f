"""Read LoRA tensor names (diffusers/peft dotted or kohya flat keys, SGM or diffusers block names) as layers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from contracts.lora_targets import TargetTable

# The down/up suffixes the worker reads (gpu/engine/lora/plan.py `_SUFFIX` and `_PROCESSOR`, mirrored here).
_DOTTED_SUFFIX = re.compile(
    r"\.(?:(?P<down>lora\.down|lora_linear_layer\.down|lora_A|lora_down)"
    r"|(?P<up>lora\.up|lora_linear_layer\.up|lora_B|lora_up))\.weight$"
)
_PROCESSOR = re.compile(r"\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<side>down|up)\.weight$")
# diffusers converts a file as kohya's only when every key has one of these prefixes (lora_te_: SD1.x's only encoder).
_KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te1_": "text_encoder",
    "lora_te_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
# The parts of a layer's adapter (contracts.lora_formats), as LyCORIS and peft name their tensors.
_LYCORIS_PARTS = {
    **{name: name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")},
    **{name: name for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")},
    "lora_mid.weight": "mid",
    "dora_scale": "dora_scale",
}
_KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha", **_LYCORIS_PARTS}
_DOTTED_PARTS = {**_LYCORIS_PARTS, "lora_magnitude_vector": "magnitude"}
_DOTTED_PART = re.compile(r"\.(?P<part>" + "|".join(re.escape(name) for name in _DOTTED_PARTS) + r")$")
# Weights of adapters the worker cannot fuse (it would fail, or diffusers would drop them silently).
_FOREIGN_ADAPTERS = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"\.on_input$|\.ia3_l", "(IA)^3"),
        (r"\.b?oft_", "OFT"),
        (r"\.[ab][12]\.weight$", "GLoRA"),
        (r"\.diff(?:_b)?$", "full weight difference"),
        (r"\.[wb]_norm$", "norm tuning"),
        (r"\.lora_embedding_[AB]", "embedding LoRA"),
        (r"\.lora_(?:A|B|up|down)\.bias$", "LoRA bias"),
    )
)
# kohya SDXL trainers name UNet layers after Stability's SGM UNet; diffusers maps them like this.
_SGM_BLOCK = re.compile(r"(?P<kind>input_blocks|output_blocks)_(?P<index>\d+)_(?P<inner>\d+)(?:_(?P<rest>.+))?")
_SGM_MIDDLE = re.compile(r"middle_block_(?P<index>[012])_(?P<rest>.+)")
_SGM_INNER = ("resnets", "attentions", "upsamplers")
_SGM_MIDDLE_PARTS = ("resnets_0", "attentions_0", "resnets_1")
_SGM_WHOLE = {
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
    "time_embed_0": "time_embedding_linear_1",
    "time_embed_2": "time_embedding_linear_2",
    "label_emb_0_0": "add_embedding_linear_1",
    "label_emb_0_2": "add_embedding_linear_2",
}
_SGM_RESNET_PARTS = {
    "in_layers_2": "conv1",
    "out_layers_3": "conv2",
    "emb_layers_1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}


@dataclass(frozen=True)
class LoraKey:
    """A LoRA tensor name read as its parts: component as written, module (dotted path or kohya flat name), and
    which part of the layer's adapter it is."""

    component: str
    module: str
    part: str  # "down" | "up" | "alpha", or a LoCon/LoHa/LoKr/DoRA part (contracts.lora_formats.FAMILY_PARTS)
    flat: bool  # kohya: `module` is the layer's path with every "." written "_"


def foreign_adapter(name: str) -> str | None:
    """The kind of adapter other than plain LoRA that a tensor name belongs to, if any."""
    return next((kind for pattern, kind in _FOREIGN_ADAPTERS if pattern.search(name)), None)


def is_kohya_name(name: str) -> bool:
    return name.startswith(tuple(_KOHYA_PREFIXES))


def read_key(name: str) -> LoraKey | None:
    """The parts of a LoRA tensor name (down/up/alpha, or a LyCORIS/DoRA part), or None when the name is not one."""
    stem, _, suffix = name.partition(".")
    if part := _KOHYA_PARTS.get(suffix):
        # kohya's flat layout; an unknown prefix (lora_transformer_: Flux) leaves the component empty.
        prefix = next((p for p in _KOHYA_PREFIXES if stem.startswith(p)), "")
        return LoraKey(_KOHYA_PREFIXES.get(prefix, ""), stem.removeprefix(prefix), part, flat=True)
    component, rest = stem, suffix
    if lycoris := _DOTTED_PART.search(rest):
        return LoraKey(component, rest[: lycoris.start()], _DOTTED_PARTS[lycoris.group("part")], flat=False)
    side = "alpha" if rest.endswith(".alpha") else ""
    rest = rest.removesuffix(".alpha")
    if processor := _PROCESSOR.search(rest):
        proj = processor.group("proj")
        path = rest[: processor.start()] + "." + ("to_out.0" if proj == "to_out" else proj)
        return LoraKey(component, path, side or processor.group("side"), flat=False)
    if standard := _DOTTED_SUFFIX.search(rest):
        return LoraKey(component, rest[: standard.start()], side or ("down" if standard.group("down") else "up"), False)
    return LoraKey(component, rest, side, flat=False) if side and rest else None


def module_path(key: LoraKey, table: TargetTable) -> str | None:
    """The table's path of the module a key names, or None when the base model has no such Linear/Conv2d."""
    layers = table.components.get(key.component)
    if layers is None:
        return None
    if not key.flat:
        path = key.module.removeprefix("text_model.") if key.component != "unet" else key.module
        return path if path in layers else None
    flat = key.module.removeprefix("text_model_") if key.component != "unet" else _kohya_unet_name(key.module, table)
    return _flat_paths(table)[key.component].get(flat) if flat else None


# Bounded: the worker checks each LoCon/LoHa/LoKr/DoRA file against a table it reads from its pipeline, a new table
# object per file; an unbounded cache keyed by table would keep every one of them.
_TABLES_CACHED = 8


@lru_cache(maxsize=_TABLES_CACHED)
def _flat_paths(table: TargetTable) -> dict[str, dict[str, str]]:
    """component → kohya flat name → module path; refuses a table where two paths flatten alike."""
    index: dict[str, dict[str, str]] = {}
    for component, layers in table.components.items():
        index[component] = {path.replace(".", "_"): path for path in layers}
        if len(index[component]) != len(layers):
            raise ValueError(f"{table.base_model} {component}: two layer paths have the same kohya flat name")
    return index


@lru_cache(maxsize=_TABLES_CACHED)
def _layers_per_block(table: TargetTable) -> int:
    return len({path.split(".")[3] for path in table.components["unet"] if path.startswith("down_blocks.0.resnets.")})


def _kohya_unet_name(flat: str, table: TargetTable) -> str | None:
    """A kohya UNet flat name in diffusers' module names (SGM names mapped as diffusers maps them); None if invalid."""
    # diffusers' kohya converter mangles the diffusers spelling add_embedding_linear_N (its `emb` heuristic drops
    # the N), so only SGM's label_emb_0_N reaches those layers.
    if flat.startswith("add_embedding_"):
        return None
    if flat in _SGM_WHOLE:
        return _SGM_WHOLE[flat]
    if middle := _SGM_MIDDLE.fullmatch(flat):
        part, rest = _SGM_MIDDLE_PARTS[int(middle.group("index"))], middle.group("rest")
        return f"mid_block_{part}_{_SGM_RESNET_PARTS.get(rest, rest)}"
    block = _SGM_BLOCK.fullmatch(flat)
    if not block:
        return flat
    index, inner, rest = int(block.group("index")), int(block.group("inner")), block.group("rest") or ""
    # SGM counts every layer of the UNet in one sequence: input block 0 is conv_in, then each down block has
    # layers_per_block layers and a downsampler; each up block has layers_per_block + 1 layers.
    per_block = _layers_per_block(table)
    if block.group("kind") == "input_blocks":
        if index == 0:
            return None
        number, layer = divmod(index - 1, per_block + 1)
        if rest == "op":
            return f"down_blocks_{number}_downsamplers_0_conv"
        prefix = "down_blocks"
    else:
        number, layer = divmod(index, per_block + 1)
        prefix = "up_blocks"
    if inner >= len(_SGM_INNER):
        return None
    if _SGM_INNER[inner] == "upsamplers":
        layer = 0
    return f"{prefix}_{number}_{_SGM_INNER[inner]}_{layer}_{_SGM_RESNET_PARTS.get(rest, rest)}"
