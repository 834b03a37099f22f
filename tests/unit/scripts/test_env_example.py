""".env.example lists every setting of every service with a line on what it does, and is what the settings classes
and the docs' tables make today."""

from __future__ import annotations

import re

from scripts import env_example


def test_the_committed_file_is_current() -> None:
    assert env_example.main(["--check"]) == 0, "run python -m scripts.env_example"


def test_every_setting_has_its_line_and_a_comment_just_above() -> None:
    lines = env_example.TARGET.read_text(encoding="utf-8").splitlines()
    settings = {name for _, cls in env_example.settings_classes() for name, _, _ in env_example.variables(cls)}
    listed: dict[str, int] = {}
    for index, line in enumerate(lines):
        match = re.fullmatch(r"(?:# )?([A-Z][A-Z0-9_]+)=.*", line)
        if match:
            listed[match.group(1)] = index
    assert set(listed) == settings
    for name, index in listed.items():
        comment = lines[index - 1]
        assert comment.startswith("# ") and "=" not in comment.split()[1], f"{name} has no comment above it"


def test_required_settings_are_placeholders_the_services_refuse() -> None:
    from services.common.app.settings import placeholder_reason

    lines = env_example.TARGET.read_text(encoding="utf-8").splitlines()
    required = [line.split("=", 1)[1] for line in lines if re.fullmatch(r"[A-Z][A-Z0-9_]+=.*", line)]
    assert required and all(placeholder_reason(value) for value in required)
