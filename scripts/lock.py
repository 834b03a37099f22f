"""uv.lock and the hashed requirements files exported from it: `python -m scripts.lock write` (`make lock`) writes
them, `python -m scripts.lock check` (`make install`, tests/unit/scripts/test_lock.py) refuses stale ones.

Standard library only: `make install` runs it before anything is installed. docs/deploy.md § Locked dependencies
says who installs which file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "uv.lock"
REQUIREMENTS = ROOT / "requirements"
# uv records no hash for a wheel of a local flat index (torch's CPU build in /opt/wheels): `write` hashes the file
# once and keeps the digest here (sha256sum's format), so the exports can pin it on a machine without the file.
LOCAL_WHEELS = REQUIREMENTS / "local-wheels.sha256"
DEV_EXTRAS = ("services", "gpu", "s3local", "modal", "test")


@dataclass(frozen=True)
class Export:
    """One requirements file: what it holds, who installs it, and the `uv export` selection that writes it."""

    path: str
    selection: tuple[str, ...]
    used_by: str


EXPORTS = (
    Export(
        "requirements/dev.txt",
        (*(arg for extra in DEV_EXTRAS for arg in ("--extra", extra)), "--group", "build", "--group", "tools"),
        "make install (developers, CI)",
    ),
    Export("requirements/tools.txt", ("--only-group", "tools"), "make install's first step: pip and uv"),
    Export("requirements/build.txt", ("--only-group", "build"), "the images' wheel build (setuptools)"),
    Export("requirements/services.txt", ("--extra", "services"), "deploy/docker/services.Dockerfile"),
    Export("requirements/worker-cpu.txt", ("--extra", "gpu"), "deploy/docker/worker-cpu.Dockerfile"),
    Export(
        "requirements/modal-worker.txt",
        ("--extra", "gpu", "--no-emit-package", "torch"),
        "gpu/modal/app.py's GPU image (torch comes from PyTorch's CUDA index before it)",
    ),
    Export("requirements/modal-web.txt", ("--only-group", "modal-web"), "gpu/modal/app.py's web image"),
)


class LockError(Exception):
    """The lock or an export is missing, stale or cannot be made; the message says what to run."""


def uv_binary() -> str:
    """uv beside this interpreter (the `tools` group installs it into the venv), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if not found:
        raise LockError("no uv: run `make install` (requirements/tools.txt brings it) or put uv on PATH")
    return found


def run_uv(uv: str, *args: str) -> str:
    """uv's output; its own message when it fails."""
    done = subprocess.run(  # noqa: S603 - uv beside this interpreter, arguments from this module
        [uv, *args, "--directory", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "UV_NO_PROGRESS": "1"},
    )
    if done.returncode != 0:
        raise LockError(f"uv {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def hashless_local_wheels(lock: Mapping[str, object]) -> dict[str, list[Path]]:
    """{package==version: its wheel files} for every locked package whose wheels are local files uv did not hash."""
    found: dict[str, list[Path]] = {}
    packages = lock.get("package", [])
    assert isinstance(packages, list)
    for package in packages:
        wheels = [w for w in package.get("wheels", []) if "path" in w and "hash" not in w]
        if wheels:
            found[f"{package['name']}=={package['version']}"] = [Path(w["path"]) for w in wheels]
    return found


def read_digests(text: str) -> dict[str, str]:
    """{wheel file name: sha256} of a sha256sum listing."""
    digests = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            digests[name.strip().lstrip("*")] = digest
    return digests


def pin_local_wheels(exported: str, wheels: Mapping[str, Sequence[Path]], digests: Mapping[str, str]) -> str:
    """The export with a `--hash` for each hashless local wheel (`uv export` writes their requirement bare)."""
    lines = exported.splitlines(keepends=True)
    for requirement, files in wheels.items():
        pattern = re.compile(rf"^{re.escape(requirement)}(\s*;[^\\\n]*)?$")
        for index, line in enumerate(lines):
            if pattern.match(line.rstrip("\n")):
                missing = [f.name for f in files if f.name not in digests]
                if missing:
                    raise LockError(f"no sha256 for {', '.join(missing)} in {LOCAL_WHEELS.name}: run `make lock`")
                hashes = "".join(f" \\\n    --hash=sha256:{digests[f.name]}" for f in sorted(files))
                lines[index] = line.rstrip("\n") + hashes + "\n"
    return "".join(lines)


def rendered_exports(uv: str, digests: Mapping[str, str]) -> dict[str, str]:
    """{path: text} of every export as the lock gives it now (offline, the lock left as it is)."""
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    wheels = hashless_local_wheels(lock)
    rendered = {}
    for export in EXPORTS:
        text = run_uv(
            uv, "export", "--frozen", "--offline", "--no-emit-project", "--no-default-groups", "--no-header",
            *export.selection,
        )  # fmt: skip
        header = (
            f"# Generated from uv.lock by `make lock` (scripts/lock.py): do not edit. Installed by {export.used_by}.\n"
        )
        rendered[export.path] = header + pin_local_wheels(text, wheels, digests)
    return rendered


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(uv: str, lock_args: Sequence[str]) -> None:
    """Resolve (keeping every pin that still fits unless told to upgrade), hash the local wheels, write the exports."""
    run_uv(uv, "lock", *lock_args)
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    listing = []
    for files in hashless_local_wheels(lock).values():
        for wheel in files:
            if not wheel.is_file():
                raise LockError(f"the lock names {wheel}, which is not on this machine: lock where it is")
            listing.append(f"{file_sha256(wheel)}  {wheel.name}\n")
    REQUIREMENTS.mkdir(exist_ok=True)
    LOCAL_WHEELS.write_text("".join(sorted(listing, key=lambda line: line.split()[1])), encoding="utf-8")
    for path, text in rendered_exports(uv, read_digests(LOCAL_WHEELS.read_text(encoding="utf-8"))).items():
        (ROOT / path).write_text(text, encoding="utf-8")


def stale_exports(uv: str) -> list[str]:
    """The exports that differ from what the lock gives (or are missing)."""
    digests = read_digests(LOCAL_WHEELS.read_text(encoding="utf-8")) if LOCAL_WHEELS.is_file() else {}
    stale = []
    for path, text in rendered_exports(uv, digests).items():
        target = ROOT / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def check(uv: str) -> None:
    """Refuse a lock that does not satisfy pyproject.toml, or exports that are not the lock's."""
    if not LOCK.is_file():
        raise LockError("no uv.lock: run `make lock`")
    try:
        run_uv(uv, "lock", "--check", "--offline")
    except LockError as error:
        raise LockError(f"uv.lock does not match pyproject.toml: run `make lock`\n{error}") from None
    stale = stale_exports(uv)
    if stale:
        raise LockError(f"{', '.join(stale)} differ from uv.lock: run `make lock`")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.lock", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "write", help="uv lock (the arguments after `write` go to it, e.g. --upgrade), then the exports"
    )
    commands.add_parser("check", help="exit 1 when uv.lock or an export is stale")
    # Everything after `write` is uv's (argparse cannot hand options such as --upgrade-package through on its own).
    args, lock_args = parser.parse_known_args(argv)
    if lock_args and args.command != "write":
        parser.error(f"unrecognized arguments: {' '.join(lock_args)}")
    try:
        uv = uv_binary()
        if args.command == "write":
            write(uv, lock_args)
        else:
            check(uv)
    except LockError as error:
        print(f"lock: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
