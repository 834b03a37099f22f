"""The committed API documents read well to a client generator: each operation a `<service>.<name>` id, unique, and
a tag; where it is served and under which terms (docs/openapi/*.json, kept current by each service's drift test)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[4] / "docs" / "openapi"


@pytest.mark.parametrize("service", ["content", "identity"])
def test_every_operation_has_a_named_id_and_a_tag_and_the_document_its_server_and_license(service: str) -> None:
    document = json.loads((DOCS / f"{service}.json").read_text(encoding="utf-8"))
    operations = [op for item in document["paths"].values() for op in item.values() if isinstance(op, dict)]
    ids = [op["operationId"] for op in operations]
    assert all(re.fullmatch(rf"{service}(\.[a-z]+)+", op_id) for op_id in ids), ids
    assert len(set(ids)) == len(ids)
    assert all(op.get("tags") for op in operations)
    assert document["servers"] and document["info"]["license"]["name"]
