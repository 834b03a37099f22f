"""The exported JSON Schema and AsyncAPI files match the models; --check catches drift."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from contracts.asyncapi import asyncapi_document
from contracts.events import EventType
from contracts.export import DEFAULT_DOCS_DIR, check, rendered_files, to_yaml
from contracts.topology import topology

REPO = Path(__file__).resolve().parents[3]


def test_committed_docs_match_the_models() -> None:
    assert check(DEFAULT_DOCS_DIR) == [], "run `python -m contracts.export` and commit docs/"


def test_asyncapi_document_describes_every_event() -> None:
    doc = yaml.safe_load((DEFAULT_DOCS_DIR / "asyncapi.yaml").read_text())
    assert doc == json.loads(json.dumps(asyncapi_document()))  # our YAML writer round-trips
    assert doc["asyncapi"] == "3.1.0"
    assert doc["defaultContentType"] == "application/cloudevents+json"
    # A channel per routing key and one per consumer queue.
    assert set(doc["channels"]) == {t.value for t in EventType} | {q.base_name for q in topology().queues}
    for name in (t.value for t in EventType):
        channel = doc["channels"][name]
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "vixen.events"
        (message_ref,) = channel["messages"].values()
        message = doc["components"]["messages"][message_ref["$ref"].rsplit("/", 1)[1]]
        data_ref = message["payload"]["allOf"][1]["properties"]["data"]["$ref"]
        assert data_ref.rsplit("/", 1)[1] in doc["components"]["schemas"], name
    actions = {op["action"] for op in doc["operations"].values()}
    assert actions == {"send", "receive"}


def test_yaml_has_no_anchors_or_aliases() -> None:
    text = (DEFAULT_DOCS_DIR / "asyncapi.yaml").read_text()
    assert not re.search(r"[&*]id\d+", text)


def test_schemas_cover_events_envelope_and_worker() -> None:
    files = rendered_files()
    names = {Path(p).stem for p in files if p.startswith("schemas/")}
    assert {f"event.{t.value}" for t in EventType} <= names
    assert {"cloudevent-envelope", "worker-request", "worker-success", "worker-error"} <= names


def test_yaml_writer_quotes_what_yaml_would_misread() -> None:
    data = {"a": "yes", "b": "1.0", "c": "x: y", "$ref": "#/p", "d": [], "e": {}, "f": [{"g": None}], "h": "it's"}
    assert yaml.safe_load(to_yaml(data)) == data


def test_check_fails_after_a_model_change_in_a_copy(tmp_path: Path) -> None:
    shutil.copytree(REPO / "contracts", tmp_path / "contracts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "docs", tmp_path / "docs")

    def run_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "contracts.export", "--check"],
            cwd=tmp_path,
            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run_check().returncode == 0
    events = tmp_path / "contracts" / "events.py"
    source = events.read_text()
    marker = '    worker_mode: Literal["sync", "async"]\n'
    assert marker in source
    events.write_text(source.replace(marker, marker + "    queue_position: int | None = None\n"))

    result = run_check()
    assert result.returncode == 1
    assert "differs: docs/schemas/event.generation.started.json" in result.stderr
    assert "differs: docs/asyncapi.yaml" in result.stderr
    assert "queue_position" in result.stderr
