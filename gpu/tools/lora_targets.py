"""Write the LoRA target tables: every Linear/Conv2d of each base model's UNet and text encoders, with its shape."""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection

import contracts.lora_targets
from gpu.tiny.model import TINY_BASE_MODEL, build_tiny_text_encoders, build_tiny_unet
from gpu.tiny.sdxl_config import SDXL_UNET_CONFIG, clip_bigg_config, clip_l_config

SDXL_BASE_MODEL = "sdxl-base-1.0"
DEFAULT_OUT = Path(contracts.lora_targets.__file__).parent


class Table(TypedDict):
    """A target table as written to JSON: component → module path → weight shape."""

    base_model: str
    components: dict[str, dict[str, list[int]]]


def _sdxl() -> dict[str, nn.Module]:
    return {
        "unet": UNet2DConditionModel(**SDXL_UNET_CONFIG),
        "text_encoder": CLIPTextModel(clip_l_config()),
        "text_encoder_2": CLIPTextModelWithProjection(clip_bigg_config()),
    }


def _tiny() -> dict[str, nn.Module]:
    text_encoder, text_encoder_2 = build_tiny_text_encoders()
    return {"unet": build_tiny_unet(), "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}


BUILDERS: dict[str, Callable[[], dict[str, nn.Module]]] = {SDXL_BASE_MODEL: _sdxl, TINY_BASE_MODEL: _tiny}


def _layers(model: nn.Module) -> dict[str, list[int]]:
    layers = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            # transformers 5 dropped the `text_model.` level from CLIPTextModel only; LoRA files carry it or not
            # whatever the class, so the tables name text-encoder layers without it.
            layers[path.removeprefix("text_model.")] = list(module.weight.shape)
    return dict(sorted(layers.items()))


def target_table(base_model: str) -> Table:
    """The table of one known base model, built from its configs on the meta device (no weights, no download)."""
    with torch.device("meta"):
        models = BUILDERS[base_model]()
    return {"base_model": base_model, "components": {name: _layers(models[name]) for name in sorted(models)}}


def render(table: Table) -> str:
    """Stable JSON with one layer per line, so that a regenerated table diffs line by line."""
    blocks = []
    for component, layers in table["components"].items():
        lines = ",\n".join(f"      {json.dumps(path)}: {json.dumps(shape)}" for path, shape in layers.items())
        blocks.append(f"    {json.dumps(component)}: {{\n{lines}\n    }}")
    body = ",\n".join(blocks)
    return f'{{\n  "base_model": {json.dumps(table["base_model"])},\n  "components": {{\n{body}\n  }}\n}}\n'


def write_tables(out_dir: Path) -> list[Path]:
    """Write `<base model>.json` for every known base model into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for base_model in BUILDERS:
        path = out_dir / f"{base_model}.json"
        path.write_text(render(target_table(base_model)), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.tools.lora_targets", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the tables (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for path in write_tables(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
