"""A clean environment for a settings class: every variable it reads cleared, then the given ones set."""

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.common.app.secret_files import SECRETS_DIR_VARIABLE


def variables_read_by(settings_type: type[BaseSettings]) -> set[str]:
    """Every environment name the class's fields are read from (all alias choices, else the field name)."""
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in settings_type.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add((prefix + field_name).upper())
    return names


def settings_env(
    monkeypatch: pytest.MonkeyPatch, settings_type: type[BaseSettings], values: dict[str, str]
) -> pytest.MonkeyPatch:
    """Clear what `settings_type` reads (so the developer's shell cannot leak in), then set `values`."""
    for name in variables_read_by(settings_type) | {SECRETS_DIR_VARIABLE}:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return monkeypatch
