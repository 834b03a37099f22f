"""Turn a LoRA state dict into a plan: which SDXL layer gets which low-rank delta, every shape checked."""

import re
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline
from torch import nn

from contracts.lora_keys import MAX_RANK, LoraRejectedError, check_lora_layers, has_extended_parts
from gpu.engine.errors import lora_load_failed
from gpu.engine.lora.formats.build import LowRank, layer_update
from gpu.engine.lora.formats.steps import WeightStep
from gpu.engine.lora.formats.targets import pipeline_table
from gpu.engine.lora.groups import MAX_GROUP_UPDATE_BYTES, FuseGroup, stack_groups
from gpu.engine.lora.parse import LoraTensors

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# The down/up (A/B) weight suffixes of the LoRA layouts diffusers reads, after its own conversion.
_SUFFIX = re.compile(
    r"\.(?:(?P<down>lora\.down|lora_linear_layer\.down|lora_A|lora_down)"
    r"|(?P<up>lora\.up|lora_linear_layer\.up|lora_B|lora_up))\.weight$"
)
# The older attention-processor layout diffusers still produces from some kohya files.
_PROCESSOR = re.compile(r"\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<side>down|up)\.weight$")
# What diffusers' kohya converter writes for text-encoder attention (its text-encoder loader reads it as q_proj…).
_TEXT_ATTENTION = re.compile(r"\.self_attn\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<side>down|up)\.weight$")
_TEXT_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass(frozen=True)
class LayerDelta:
    """One layer's low-rank update: weight += scale * alpha_scale * up @ down."""

    component: str
    module_path: str
    down: torch.Tensor
    up: torch.Tensor
    # alpha / rank when the file gives an alpha (kohya), else 1.0 (diffusers' and peft's default).
    alpha_scale: float


@dataclass(frozen=True)
class LoraPlan:
    """Every layer delta of one LoRA, ready to fuse into this pipeline's architecture. `groups` holds the deltas
    stacked by shape (`grouped`); `fuse_groups` stacks them for a plan made without. `steps` are the layers no
    low-rank delta expresses (DoRA, and LoHa/LoKr updates denser than their low-rank form), applied after them."""

    deltas: tuple[LayerDelta, ...]
    groups: tuple[FuseGroup, ...] = ()
    steps: tuple[WeightStep, ...] = ()

    def fuse_groups(self) -> tuple[FuseGroup, ...]:
        """The stacks to fuse: the plan's own, else made now from its deltas (a plan built by hand)."""
        return self.groups or stack_groups(layers_of(self.deltas))

    @property
    def nbytes(self) -> int:
        deltas = sum(d.down.numel() * d.down.element_size() + d.up.numel() * d.up.element_size() for d in self.deltas)
        return deltas + sum(step.nbytes for step in self.steps)


def _io_features(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return None


def _convert(pipeline: StableDiffusionXLPipeline, tensors: LoraTensors) -> tuple[LoraTensors, dict[str, float]]:
    """Let diffusers map kohya/A1111 layouts onto its module names; we never let it load the weights."""
    try:
        converted, alphas = StableDiffusionXLPipeline.lora_state_dict(dict(tensors), unet_config=pipeline.unet.config)
    except Exception as exc:  # diffusers raises ValueError/KeyError/RuntimeError on foreign layouts
        raise lora_load_failed("LoRA layout is not one diffusers can read", reason=str(exc)[:200]) from None
    merged_alphas = {k: float(v) for k, v in (alphas or {}).items()}
    for key in [k for k in converted if k.endswith(".alpha")]:
        merged_alphas[key] = float(converted.pop(key).item())
    return converted, merged_alphas


def _split(key: str) -> tuple[str, str, str]:
    """(component, module path, "down" | "up" | "alpha") for a converted key, or LORA_LOAD_FAILED."""
    component, _, rest = key.partition(".")
    side = ""
    if rest.endswith(".alpha"):
        rest, side = rest.removesuffix(".alpha"), "alpha"
    processor = _PROCESSOR.search(rest)
    text_attention = _TEXT_ATTENTION.search(rest)
    standard = _SUFFIX.search(rest)
    if text_attention:
        path = rest[: text_attention.start()] + ".self_attn." + _TEXT_PROJECTIONS[text_attention.group("proj")]
        side = side or text_attention.group("side")
    elif processor:
        proj = processor.group("proj")
        path = rest[: processor.start()] + "." + ("to_out.0" if proj == "to_out" else proj)
        side = side or processor.group("side")
    elif standard:
        path = rest[: standard.start()]
        side = side or ("down" if standard.group("down") else "up")
    elif side == "alpha":
        path = rest
    else:
        path = ""
    if component not in COMPONENTS or not path:
        raise lora_load_failed("LoRA key targets nothing in SDXL", key=key[:200])
    return component, path, side


def plan_lora(
    pipeline: StableDiffusionXLPipeline, tensors: LoraTensors, group_bytes: int = MAX_GROUP_UPDATE_BYTES
) -> LoraPlan:
    """Raise LORA_LOAD_FAILED unless every weight pairs up and fits a Linear/Conv2d layer of this pipeline; the
    plan's deltas stacked in groups of at most `group_bytes` of updates."""
    if has_extended_parts(tensors):
        # LoCon CP cores, LoHa, LoKr, DoRA: diffusers' converter refuses them or drops parts silently (a DoRA
        # magnitude), so these files are read by the same check identity runs at upload (contracts.lora_keys).
        return plan_formats(pipeline, tensors, group_bytes)
    converted, alphas = _convert(pipeline, tensors)
    halves: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in converted.items():
        component, path, side = _split(key)
        halves.setdefault((component, path), {})[side] = tensor
    layer_alphas = {_split(key)[:2]: value for key, value in alphas.items()}
    deltas = []
    for (component, path), pair in sorted(halves.items()):
        if set(pair) != {"down", "up"}:
            raise lora_load_failed("LoRA layer has a down or up weight without its pair", layer=f"{component}.{path}")
        module, resolved = _resolve(getattr(pipeline, component), component, path)
        down, up = pair["down"], pair["up"]
        _check_shapes(f"{component}.{resolved}", module, down, up)
        alpha = layer_alphas.get((component, path))
        deltas.append(LayerDelta(component, resolved, down, up, alpha / down.shape[0] if alpha else 1.0))
    if not deltas:
        raise lora_load_failed("LoRA file holds no LoRA weights")
    return grouped(deltas, group_bytes)


def plan_formats(
    pipeline: StableDiffusionXLPipeline, tensors: LoraTensors, group_bytes: int = MAX_GROUP_UPDATE_BYTES
) -> LoraPlan:
    """The plan of a file in any layout and format contracts.lora_keys accepts, checked against this pipeline's own
    layers; LORA_LOAD_FAILED with the check's reason code otherwise."""
    entries = {name: {"shape": list(tensor.shape)} for name, tensor in tensors.items()}
    try:
        layers = check_lora_layers(entries, pipeline_table(pipeline))
    except LoraRejectedError as error:
        raise lora_load_failed(error.message, reason=error.reason) from None
    deltas: list[LayerDelta] = []
    steps: list[WeightStep] = []
    for layer in layers:
        module, resolved = _resolve(getattr(pipeline, layer.component), layer.component, layer.module_path)
        weight: torch.Tensor = module.weight  # type: ignore[assignment]  # a Linear/Conv2d: the table lists no other
        update = layer_update((layer.component, resolved), layer, tensors, tuple(weight.shape))
        if isinstance(update, LowRank):
            deltas.append(LayerDelta(layer.component, resolved, update.down, update.up, update.alpha_scale))
        else:
            steps.append(update)
    return grouped(deltas, group_bytes, tuple(steps))


def layers_of(
    deltas: tuple[LayerDelta, ...] | list[LayerDelta],
) -> list[tuple[tuple[str, str], torch.Tensor, torch.Tensor, float]]:
    """The deltas as the (key, down, up, alpha_scale) rows that `stack_groups` takes."""
    return [((d.component, d.module_path), d.down, d.up, d.alpha_scale) for d in deltas]


def _with_groups(
    deltas: tuple[LayerDelta, ...] | list[LayerDelta], groups: tuple[FuseGroup, ...], steps: tuple[WeightStep, ...]
) -> LoraPlan:
    """A plan over `groups` whose deltas are views into the stacks (so nothing is held twice)."""
    rows = {key: (group.down[i], group.up[i]) for group in groups for i, key in enumerate(group.keys)}
    views = []
    for d in deltas:
        down, up = rows[(d.component, d.module_path)]
        views.append(
            LayerDelta(d.component, d.module_path, down.view(d.down.shape), up.view(d.up.shape), d.alpha_scale)
        )
    return LoraPlan(tuple(views), groups, steps)


def grouped(
    deltas: tuple[LayerDelta, ...] | list[LayerDelta],
    group_bytes: int = MAX_GROUP_UPDATE_BYTES,
    steps: tuple[WeightStep, ...] = (),
) -> LoraPlan:
    """The plan of these deltas with their stacks made (once, when the plan is made and cached), and its steps."""
    return _with_groups(deltas, stack_groups(layers_of(deltas), group_bytes), steps)


def _resolve(encoder: nn.Module, component: str, path: str) -> tuple[nn.Module, str]:
    """The module a LoRA path names, and its path in this model."""
    candidates = [path]
    if component != "unet":
        # transformers 5 flattened CLIPTextModel (no `text_model.` level) but not CLIPTextModelWithProjection,
        # whose text_projection sits outside it; LoRA files carry the level or not whatever the model does.
        inner = path.removeprefix("text_model.")
        candidates += [inner, f"text_model.{inner}"]
    for candidate in dict.fromkeys(candidates):
        try:
            return encoder.get_submodule(candidate), candidate
        except AttributeError:
            continue
    layer = f"{component}.{path}"[:200]
    raise lora_load_failed("LoRA targets a layer SDXL does not have", layer=layer)


def _check_shapes(layer: str, module: nn.Module, down: torch.Tensor, up: torch.Tensor) -> None:
    features = _io_features(module)
    if features is None:
        raise lora_load_failed("LoRA targets a layer that is not Linear or Conv2d", layer=layer[:200])
    in_features, out_features = features
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # Linear/Conv2d, checked above
    weight_shape = tuple(weight.shape)
    expected_down_tail = weight_shape[1:] if isinstance(module, nn.Conv2d) else (in_features,)
    fits = (
        down.dim() in (2, 4)
        and up.dim() in (2, 4)
        and 0 < down.shape[0] <= MAX_RANK
        and tuple(down.shape[1:]) == expected_down_tail
        and up.shape[0] == out_features
        and up.shape[1] == down.shape[0]
        and all(size == 1 for size in up.shape[2:])
    )
    if not fits:
        raise lora_load_failed(
            "LoRA weight shapes do not fit the SDXL layer they target",
            layer=layer[:200],
            down=list(down.shape),
            up=list(up.shape),
            layer_weight=list(weight_shape),
        )


def pinned(plan: LoraPlan) -> LoraPlan:
    """The same plan with page-locked host tensors, so copies to the GPU run at full speed."""
    return _with_groups(plan.deltas, tuple(group.pinned() for group in plan.fuse_groups()), plan.steps)
