"""CLI: `python -m gpu.tiny model --out DIR` and `python -m gpu.tiny lora --out FILE [--seed N] [--rank R]`."""

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.tiny", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="build the tiny SDXL into a directory")
    model.add_argument("--out", type=Path, required=True)
    model.add_argument("--seed", type=int, default=0)
    lora = commands.add_parser("lora", help="write a LoRA .safetensors file for the tiny SDXL")
    lora.add_argument("--out", type=Path, required=True)
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--rank", type=int, default=4)
    lora.add_argument("--kind", choices=["sdxl", "sd15"], default="sdxl")
    lora.add_argument("--text-encoders", action="store_true", help="also adapt both text encoders")
    args = parser.parse_args(argv)

    # Imported here so that `--help` answers without loading torch.
    if args.command == "model":
        from gpu.tiny.model import save_tiny_model

        print(save_tiny_model(args.out, seed=args.seed))
    else:
        from gpu.tiny.lora import write_lora

        if args.rank < 1:
            parser.error("--rank must be at least 1")
        print(write_lora(args.out, seed=args.seed, rank=args.rank, kind=args.kind, text_encoders=args.text_encoders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
