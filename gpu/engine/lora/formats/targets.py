"""The target table of a live pipeline (every Linear/Conv2d and its weight shape), as contracts/lora_targets has it."""

from __future__ import annotations

from types import MappingProxyType

from torch import nn

from contracts.lora_targets import TargetTable

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def pipeline_table(pipeline: object) -> TargetTable:
    """The table contracts.lora_keys checks a file against, read from this pipeline's modules (text-encoder paths
    without `text_model.`, as the committed tables and gpu/tools/lora_targets.py write them)."""
    components = {}
    for component in COMPONENTS:
        model: nn.Module = getattr(pipeline, component)
        layers = {
            path.removeprefix("text_model."): tuple(module.weight.shape)
            for path, module in model.named_modules()
            if isinstance(module, nn.Linear | nn.Conv2d)
        }
        components[component] = MappingProxyType(layers)
    return TargetTable(base_model="this pipeline", components=MappingProxyType(components))
