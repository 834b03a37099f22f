"""Check a LoRA's tensor names and shapes against a base model's target table, without torch or the tensor data."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict

from contracts.lora_formats import EXTENDED_PARTS, MAX_RANK, WEIGHT_PARTS, AdapterKind, DoraAxis, layer_format
from contracts.lora_layouts import foreign_adapter, is_kohya_name, module_path, read_key
from contracts.lora_rejections import REJECTION_MESSAGE_LIMIT, LoraRejectedError, LoraRejectReason, rejected
from contracts.lora_targets import TargetTable

# Re-exported: identity, the worker and the tests import the rejection vocabulary and the rank bound from here.
__all__ = [
    "MAX_RANK",
    "REJECTION_MESSAGE_LIMIT",
    "LoraLayer",
    "LoraRejectReason",
    "LoraRejectedError",
    "LoraSummary",
    "check_lora_layers",
    "check_lora_tensors",
    "has_extended_parts",
]
_NAME_IN_MESSAGE = 120


@dataclass(frozen=True)
class LoraLayer:
    """One layer a LoRA adapts: its component, its path in the target table, its format (kind, rank, DoRA axis),
    its alpha tensor's name (None when absent or when the format ignores it) and its tensors (part → name)."""

    component: str
    module_path: str
    rank: int
    alpha_key: str | None
    kind: AdapterKind
    dora: DoraAxis | None
    parts: Mapping[str, str]


class LoraSummary(BaseModel):
    """What a LoRA adapts, for display and for the lora.ready event."""

    model_config = ConfigDict(frozen=True)

    rank: int
    ranks: tuple[int, ...]
    # The most common alpha of the file; None when it has no alpha tensors or their values were not given.
    alpha: float | None
    alpha_layers: int  # layers whose alpha the file sets (the worker scales those by alpha / rank)
    layer_count: int
    components: tuple[str, ...]
    target_modules: tuple[str, ...]


def check_lora_tensors(
    entries: Mapping[str, Mapping[str, object]],
    table: TargetTable,
    *,
    alpha_values: Mapping[str, float] | None = None,
) -> LoraSummary:
    """Summarise a LoRA from its safetensors header entries (without `__metadata__`), or raise LoraRejectedError.

    The header holds no tensor values: pass `alpha_values` (alpha tensor name → value) to get `alpha`.
    """
    layers = check_lora_layers(entries, table)
    ranks = sorted({layer.rank for layer in layers})
    given = alpha_values or {}
    alphas = Counter(
        given[layer.alpha_key] for layer in layers if layer.alpha_key is not None and layer.alpha_key in given
    )
    return LoraSummary(
        rank=ranks[-1],
        ranks=tuple(ranks),
        alpha=float(alphas.most_common(1)[0][0]) if alphas else None,
        alpha_layers=sum(layer.alpha_key is not None for layer in layers),
        layer_count=len(layers),
        components=tuple(sorted({layer.component for layer in layers})),
        target_modules=tuple(sorted({_module_name(layer.module_path) for layer in layers})),
    )


def has_extended_parts(names: Iterable[str]) -> bool:
    """Whether any tensor is a LoCon CP core, a LoHa/LoKr factor or a DoRA magnitude (no plain down/up/alpha)."""
    return any(key is not None and key.part in EXTENDED_PARTS for key in map(read_key, names))


def check_lora_layers(entries: Mapping[str, Mapping[str, object]], table: TargetTable) -> tuple[LoraLayer, ...]:
    """Every layer the LoRA adapts, each checked as the worker checks it; LoraRejectedError otherwise."""
    names = sorted(entries)
    unsupported = LoraRejectReason.UNSUPPORTED_FORMAT
    for name in names:
        if kind := foreign_adapter(name):
            raise rejected(unsupported, name, f"is a {kind} weight: only LoRA, LoCon, LoHa, LoKr and DoRA apply")
    kohya_names = [name for name in names if is_kohya_name(name)]
    if kohya_names and len(kohya_names) < len(names):
        # diffusers converts a kohya file only when every key is kohya's; the worker refuses the others.
        raise rejected(unsupported, kohya_names[0], "is a kohya key beside keys of other layouts")
    keys = {name: read_key(name) for name in names}
    if not any(key and key.part in WEIGHT_PARTS for key in keys.values()):
        raise LoraRejectedError(
            LoraRejectReason.NO_LORA_WEIGHTS, f"no LoRA down/up weight in a file of {len(names)} tensors: not a LoRA"
        )
    layers: dict[tuple[str, str], dict[str, str]] = {}
    for name, key in keys.items():
        if key is None:
            raise rejected(unsupported, name, "is not a part of a LoRA, LoCon, LoHa, LoKr or DoRA layer")
        path = module_path(key, table)
        if path is None:
            raise rejected(
                LoraRejectReason.WRONG_ARCHITECTURE,
                name,
                f"names a layer {table.base_model} does not have",
            )
        layers.setdefault((key.component, path), {})[key.part] = name
    return tuple(_layer(component, path, parts, entries, table) for (component, path), parts in sorted(layers.items()))


def _layer(
    component: str, path: str, parts: dict[str, str], entries: Mapping[str, Mapping[str, object]], table: TargetTable
) -> LoraLayer:
    shapes = {name: _shape(entries, name) for name in parts.values()}
    found = layer_format(f"{component}.{path}", parts, shapes, table.components[component][path])
    alpha_key = parts.get("alpha")
    if alpha_key is not None and math.prod(shapes[alpha_key]) != 1:
        raise rejected(LoraRejectReason.SHAPE_MISMATCH, alpha_key, "is not a single number")
    alpha_key = alpha_key if found.alpha_applies else None
    return LoraLayer(component, path, found.rank, alpha_key, found.kind, found.dora, MappingProxyType(dict(parts)))


def _shape(entries: Mapping[str, Mapping[str, object]], name: str) -> tuple[int, ...]:
    shape = entries[name].get("shape")
    if not (isinstance(shape, list) and all(isinstance(size, int) for size in shape)):
        raise TypeError(f"tensor {name[:_NAME_IN_MESSAGE]!r}: check the header with contracts.safetensors_header first")
    return tuple(shape)


def _module_name(path: str) -> str:
    """The name a LoRA config targets: the last path part, with its parent when that part is an index (to_out.0)."""
    parent, _, last = path.rpartition(".")
    return f"{parent.rpartition('.')[2]}.{last}" if last.isdigit() else last
