"""The local stack's HS256 signing secret in `.run/auth-dev-secret` (development only; never production)."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

DEV_SECRET_FILENAME = "auth-dev-secret"  # noqa: S105 (a file name, not a secret)


def read_dev_secret(run_dir: Path) -> str | None:
    """The development secret in `run_dir`, or None when there is none."""
    try:
        secret = (run_dir / DEV_SECRET_FILENAME).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return secret or None


def ensure_dev_secret(run_dir: Path) -> str:
    """The development secret in `run_dir`, first created (mode 0600, 256 random bits) when absent."""
    existing = read_dev_secret(run_dir)
    if existing is not None:
        return existing
    run_dir.mkdir(parents=True, exist_ok=True)
    # Written aside (mkstemp creates it 0600) and linked into place: the file never exists half-written, and
    # of two launchers racing, the second keeps the first one's secret instead of overwriting it.
    handle, temporary = tempfile.mkstemp(dir=run_dir, prefix=f".{DEV_SECRET_FILENAME}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, run_dir / DEV_SECRET_FILENAME)
    finally:
        os.unlink(temporary)
    secret = read_dev_secret(run_dir)
    if secret is None:  # only when someone left an empty file there
        raise RuntimeError(f"{run_dir / DEV_SECRET_FILENAME} is empty: delete it and start again")
    return secret
