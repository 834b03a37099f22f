"""Check a LoRA's tensor names and shapes against a base model's target table, without torch or the tensor data."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from contracts.lora_layouts import foreign_adapter, is_kohya_name, module_path, read_key
from contracts.lora_targets import TargetTable

# The largest rank accepted, by identity at upload and by the worker (gpu/engine/lora/plan.py) at load.
MAX_RANK = 1024
_NAME_IN_MESSAGE = 120


class LoraRejectReason(StrEnum):
    """Why a file is not a LoRA the worker can apply to this base model (stable codes)."""

    NO_LORA_WEIGHTS = "no_lora_weights"  # no LoRA down/up weight at all (a checkpoint, an embedding)
    UNSUPPORTED_FORMAT = "unsupported_format"  # other adapter kinds (LyCORIS, DoRA) or non-LoRA tensors beside LoRA
    WRONG_ARCHITECTURE = "wrong_architecture"  # names a module the base model does not have (SD1.5, Flux, SD3)
    SHAPE_MISMATCH = "shape_mismatch"  # the module exists but the weights do not fit it
    INCOMPLETE_LAYER = "incomplete_layer"  # a down without its up, the reverse, or an alpha without either
    RANK_TOO_LARGE = "rank_too_large"  # rank over MAX_RANK


# The longest sentence a rejection keeps: identity stores it on the version and shows it to the creator.
REJECTION_MESSAGE_LIMIT = 500


class LoraRejectedError(ValueError):
    """The file is refused; `reason` is the stable code (a LoraRejectReason here, identity adds file-level ones),
    `message` the sentence for the creator (bounded), naming the first offending key where there is one."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message[:REJECTION_MESSAGE_LIMIT]


@dataclass(frozen=True)
class LoraLayer:
    """One layer a LoRA adapts: its component, its path in the target table, its rank and its alpha tensor's name."""

    component: str
    module_path: str
    rank: int
    alpha_key: str | None


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


def check_lora_layers(entries: Mapping[str, Mapping[str, object]], table: TargetTable) -> tuple[LoraLayer, ...]:
    """Every layer the LoRA adapts, each checked as the worker checks it; LoraRejectedError otherwise."""
    names = sorted(entries)
    for name in names:
        if kind := foreign_adapter(name):
            raise _rejected(LoraRejectReason.UNSUPPORTED_FORMAT, name, f"is a {kind} weight: only LoRA down/up applies")
    kohya_names = [name for name in names if is_kohya_name(name)]
    if kohya_names and len(kohya_names) < len(names):
        # diffusers converts a kohya file only when every key is kohya's; the worker refuses the others.
        raise _rejected(
            LoraRejectReason.UNSUPPORTED_FORMAT, kohya_names[0], "is a kohya key beside keys of other layouts"
        )
    keys = {name: read_key(name) for name in names}
    if not any(key and key.side != "alpha" for key in keys.values()):
        raise LoraRejectedError(
            LoraRejectReason.NO_LORA_WEIGHTS, f"no LoRA down/up weight in a file of {len(names)} tensors: not a LoRA"
        )
    halves: dict[tuple[str, str], dict[str, str]] = {}
    for name, key in keys.items():
        if key is None:
            raise _rejected(LoraRejectReason.UNSUPPORTED_FORMAT, name, "is not a LoRA down, up or alpha tensor")
        path = module_path(key, table)
        if path is None:
            raise _rejected(
                LoraRejectReason.WRONG_ARCHITECTURE,
                name,
                f"names a layer {table.base_model} does not have",
            )
        halves.setdefault((key.component, path), {})[key.side] = name
    return tuple(_layer(component, path, sides, entries, table) for (component, path), sides in sorted(halves.items()))


def _layer(
    component: str, path: str, sides: dict[str, str], entries: Mapping[str, Mapping[str, object]], table: TargetTable
) -> LoraLayer:
    if "down" not in sides or "up" not in sides:
        missing = "up" if "down" in sides else "down"
        raise _rejected(LoraRejectReason.INCOMPLETE_LAYER, min(sides.values()), f"has no {missing} weight beside it")
    down, up = _shape(entries, sides["down"]), _shape(entries, sides["up"])
    weight = table.components[component][path]
    layer = f"{component}.{path}"
    if len(down) not in (2, 4) or len(up) not in (2, 4):
        raise _shape_mismatch(sides["down"], layer, down, up, weight)
    rank = down[0]
    if rank > MAX_RANK:
        raise _rejected(LoraRejectReason.RANK_TOO_LARGE, sides["down"], f"has rank {rank}, over {MAX_RANK}")
    # As gpu/engine/lora/plan.py `_check_shapes`: Linear weight [out, in] takes down [r, in], Conv2d [out, in, kh, kw]
    # takes down [r, in, kh, kw]; up is [out, r] or [out, r, 1, 1] for either.
    fits = rank > 0 and down[1:] == weight[1:] and up[:2] == (weight[0], rank) and all(d == 1 for d in up[2:])
    if not fits:
        raise _shape_mismatch(sides["down"], layer, down, up, weight)
    alpha_key = sides.get("alpha")
    if alpha_key is not None and math.prod(_shape(entries, alpha_key)) != 1:
        raise _rejected(LoraRejectReason.SHAPE_MISMATCH, alpha_key, "is not a single number")
    return LoraLayer(component, path, rank, alpha_key)


def _shape(entries: Mapping[str, Mapping[str, object]], name: str) -> tuple[int, ...]:
    shape = entries[name].get("shape")
    if not (isinstance(shape, list) and all(isinstance(size, int) for size in shape)):
        raise TypeError(f"tensor {name[:_NAME_IN_MESSAGE]!r}: check the header with contracts.safetensors_header first")
    return tuple(shape)


def _module_name(path: str) -> str:
    """The name a LoRA config targets: the last path part, with its parent when that part is an index (to_out.0)."""
    parent, _, last = path.rpartition(".")
    return f"{parent.rpartition('.')[2]}.{last}" if last.isdigit() else last


def _shape_mismatch(
    name: str, layer: str, down: tuple[int, ...], up: tuple[int, ...], weight: tuple[int, ...]
) -> LoraRejectedError:
    return _rejected(
        LoraRejectReason.SHAPE_MISMATCH,
        name,
        f"does not fit {layer[:_NAME_IN_MESSAGE]}: down {list(down)}, up {list(up)}, layer weight {list(weight)}",
    )


def _rejected(reason: LoraRejectReason, name: str, problem: str) -> LoraRejectedError:
    label = name if len(name) <= _NAME_IN_MESSAGE else name[: _NAME_IN_MESSAGE - 1] + "…"
    return LoraRejectedError(reason, f"LoRA tensor {label!r} {problem}")
