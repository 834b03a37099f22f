"""Check that a LoRA state dict targets modules SDXL really has, with shapes that fit them."""

import re

import torch
from diffusers import StableDiffusionXLPipeline
from torch import nn

from gpu.errors import lora_load_failed

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# The down/up (A/B) weight suffixes of the LoRA formats diffusers reads, after its own conversion.
_SUFFIX = re.compile(
    r"\.(?:(?P<down>lora\.down|lora_linear_layer\.down|lora_A|lora_down)"
    r"|(?P<up>lora\.up|lora_linear_layer\.up|lora_B|lora_up))\.weight$"
)
MAX_RANK = 1024


def _io_features(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return None


def check_compatible(pipeline: StableDiffusionXLPipeline, state: dict[str, torch.Tensor]) -> int:
    """Raise LORA_LOAD_FAILED unless every LoRA weight fits a layer of this pipeline; return the count."""
    try:
        converted, _alphas = StableDiffusionXLPipeline.lora_state_dict(dict(state), unet_config=pipeline.unet.config)
    except Exception as exc:  # diffusers raises ValueError/KeyError/RuntimeError on foreign layouts
        raise lora_load_failed("LoRA layout is not one diffusers can read", reason=str(exc)[:200]) from None
    weights = 0
    for key, tensor in converted.items():
        if key.endswith(".alpha"):
            continue
        component_name, _, rest = key.partition(".")
        match = _SUFFIX.search(rest)
        if component_name not in COMPONENTS or match is None:
            raise lora_load_failed("LoRA key targets nothing in SDXL", key=key[:200])
        module_path = rest[: match.start()]
        component = getattr(pipeline, component_name)
        try:
            module = component.get_submodule(module_path)
        except AttributeError:
            raise lora_load_failed("LoRA targets a layer SDXL does not have", key=key[:200]) from None
        features = _io_features(module)
        if features is None:
            raise lora_load_failed("LoRA targets a layer that is not Linear or Conv2d", key=key[:200])
        _check_shape(key, tensor, features, is_down=match.group("down") is not None)
        weights += 1
    if weights == 0:
        raise lora_load_failed("LoRA file holds no LoRA weights")
    return weights


def _check_shape(key: str, tensor: torch.Tensor, features: tuple[int, int], is_down: bool) -> None:
    in_features, out_features = features
    if tensor.dim() not in (2, 4):
        raise lora_load_failed("LoRA weight has an unexpected rank", key=key[:200], shape=list(tensor.shape))
    rank = tensor.shape[0] if is_down else tensor.shape[1]
    fits = tensor.shape[1] == in_features if is_down else tensor.shape[0] == out_features
    if not fits or not 0 < rank <= MAX_RANK:
        raise lora_load_failed(
            "LoRA weight shape does not fit the SDXL layer it targets",
            key=key[:200],
            shape=list(tensor.shape),
            layer_in=in_features,
            layer_out=out_features,
        )
