"""A service's OpenAPI document as committed text (docs/openapi/<service>.json), written by its `openapi` command."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

# What every service's document says of where it is served and under which terms (FastAPI's keyword arguments):
# relative to the origin the document is read from, as each service serves its own; no open-source license, named
# by the SPDX expression the package itself declares (pyproject.toml `license`; OpenAPI 3.1 `identifier`).
DOCUMENT_META: dict[str, Any] = {
    "servers": [{"url": "/", "description": "the service's own origin (content :8000, identity :8001 locally)"}],
    "license_info": {"name": "Proprietary: VixenBliss, all rights reserved", "identifier": "LicenseRef-Proprietary"},
}


def document_text(app: FastAPI) -> str:
    """The document, formatted the one way it is committed (a drift test compares text to text)."""
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False) + "\n"


def openapi_command(argv: Sequence[str], *, prog: str, build_app: Callable[[], FastAPI], default_out: Path) -> int:
    """`python -m services.<name> openapi [--out PATH | --check]`: write the document, or fail when it drifted."""
    parser = argparse.ArgumentParser(prog=f"{prog} openapi", description=__doc__)
    parser.add_argument("--out", type=Path, default=default_out, help=f"where to write it ({default_out})")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed document differs")
    args = parser.parse_args(argv)
    text = document_text(build_app())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run `{prog} openapi`")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0
