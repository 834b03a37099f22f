"""A Python client generated from a committed OpenAPI document (openapi-python-client, from the test extra), the
example program a doc shows for it, and that program type-checked with `mypy --strict` against the client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLIENT_PACKAGE = "vixenbliss_content_client"
# The marker docs/content.md puts before the program's ```python block.
EXAMPLE_MARKER = "<!-- generated-client-example"
# openapi-python-client 0.29.1's own client.py passes `*args: object` on to httpx's typed `__exit__` (12 errors under
# --strict, whatever the document): only that module of its template is let off; the program, and the operations and
# models made from the document, are checked strictly.
MYPY_CONFIG = f"""[mypy]
strict = True

[mypy-{CLIENT_PACKAGE}.client]
ignore_errors = True
"""


def documented_program(markdown: Path) -> str:
    """The ```python block that follows the example marker in `markdown`."""
    text = markdown.read_text(encoding="utf-8")
    found = re.search(re.escape(EXAMPLE_MARKER) + r".*?\n```python\n(.*?)\n```", text, re.S)
    assert found, f"{markdown} has no ```python block after {EXAMPLE_MARKER}"
    return found.group(1) + "\n"


def generate_client(document: Path, into: Path) -> Path:
    """Generate the client package from `document` into `into`/<package>; its path. The generator formats what it
    writes with `ruff`, found on PATH: the venv's."""
    generator = BIN / "openapi-python-client"
    if not generator.exists():
        pytest.skip("openapi-python-client is not installed (the `test` extra pins it)")
    package = into / CLIENT_PACKAGE
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(generator), "generate", "--path", str(document), "--meta", "none", "--output-path", str(package)]
    result = subprocess.run(command, cwd=into, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and package.is_dir(), result.stdout + result.stderr
    # The generator reports what it could not turn into code as warnings, and still exits 0.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    return package


def mypy_strict(folder: Path, program: str) -> subprocess.CompletedProcess[str]:
    """`mypy --strict` over `program` in `folder` and the client package beside it (no repository config)."""
    config = folder / "mypy.ini"
    config.write_text(MYPY_CONFIG, encoding="utf-8")
    command = [str(BIN / "mypy"), "--config-file", str(config), "--cache-dir", str(folder / ".mypy_cache"), program]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=180, check=False)
