"""The committed LoRA target tables are what the installed diffusers/transformers build: a change there fails here."""

import json
from importlib import resources
from pathlib import Path

from contracts.lora_targets import KNOWN_BASE_MODELS, load_target_table
from gpu.tools.lora_targets import BUILDERS, main

REGENERATE = "the architecture changed: run `python -m gpu.tools.lora_targets` and commit contracts/lora_targets/*.json"


def _committed(base_model: str) -> str:
    return resources.files("contracts.lora_targets").joinpath(f"{base_model}.json").read_text(encoding="utf-8")


def _drift(fresh: dict[str, dict[str, list[int]]], committed: dict[str, dict[str, list[int]]]) -> str:
    """The first few layers that appeared, disappeared or changed shape, for the failure message."""
    changes = []
    for component in sorted(fresh.keys() | committed.keys()):
        now, before = fresh.get(component, {}), committed.get(component, {})
        for path in sorted(now.keys() | before.keys()):
            if now.get(path) != before.get(path):
                changes.append(f"{component}.{path}: {before.get(path)} -> {now.get(path)}")
    return f"{len(changes)} layers differ, e.g. {changes[:5]}"


def test_every_base_model_the_tool_builds_has_a_committed_table() -> None:
    assert sorted(BUILDERS) == list(KNOWN_BASE_MODELS), REGENERATE


def test_regenerated_tables_equal_the_committed_ones(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    for base_model in KNOWN_BASE_MODELS:
        fresh_text, committed_text = (
            (tmp_path / f"{base_model}.json").read_text(encoding="utf-8"),
            _committed(base_model),
        )
        fresh, committed = json.loads(fresh_text)["components"], json.loads(committed_text)["components"]
        assert fresh == committed, f"{base_model}: {_drift(fresh, committed)}; {REGENERATE}"
        assert fresh_text == committed_text, f"{base_model}: the file's formatting differs; {REGENERATE}"
        loaded = load_target_table(base_model).components
        assert {c: {p: list(shape) for p, shape in layers.items()} for c, layers in loaded.items()} == committed
