"""Settings read from a folder of files, one per variable (a mounted Kubernetes Secret): VIXEN_SECRETS_DIR names it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SecretsSettingsSource

SECRETS_DIR_VARIABLE = "VIXEN_SECRETS_DIR"


class SecretsFolderError(ValueError):
    """VIXEN_SECRETS_DIR is set but names no folder."""


def secrets_folder(environ: Mapping[str, str]) -> Path | None:
    """The folder VIXEN_SECRETS_DIR names; None when it is unset or empty; SecretsFolderError when no such folder."""
    value = environ.get(SECRETS_DIR_VARIABLE, "").strip()
    if not value:
        return None
    folder = Path(value)
    if not folder.is_dir():
        # Refused rather than skipped: a secret volume that is not mounted would otherwise read as unset variables.
        raise SecretsFolderError(f"{SECRETS_DIR_VARIABLE}={value} is not a folder (is the secret volume mounted?)")
    return folder


def secret_file_sources(
    settings_cls: type[BaseSettings], environ: Mapping[str, str] = os.environ
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The source reading each variable of `settings_cls` from the file of that name in VIXEN_SECRETS_DIR (its
    content, surrounding whitespace stripped), or nothing when the variable is unset."""
    folder = secrets_folder(environ)
    if folder is None:
        return ()
    # pydantic-settings' own source: names matched as the environment's are (case, aliases), and a file that links
    # out of the folder is skipped (a Secret volume's files are links into its own `..data` folder).
    return (SecretsSettingsSource(settings_cls, secrets_dir=folder),)
