"""The committed API documents read well to a client generator and a fuzzer: each operation a `<service>.<name>` id,
unique, and a tag; where it is served and under which terms; a page cursor's exact shape (docs/openapi/*.json, kept
current by each service's drift test)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.common.http.pagination import CURSOR_LENGTH, CURSOR_PATTERN

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


@pytest.mark.parametrize("service", ["content", "identity"])
def test_every_page_cursor_is_documented_by_the_exact_shape_of_the_cursors_the_api_issues(service: str) -> None:
    # Guards: a pattern wider than the cursors (`cursor=0` matched `^[A-Za-z0-9_-]+$` and was a 422: a fuzzer's
    # "schema-valid request rejected"); tests/unit/common/test_pagination_properties.py holds the shape to the code.
    document = json.loads((DOCS / f"{service}.json").read_text(encoding="utf-8"))
    cursors = [
        param["schema"]["anyOf"][0]
        for item in document["paths"].values()
        for op in item.values()
        for param in op.get("parameters", [])
        if param["name"] == "cursor"
    ]
    assert cursors, "no list with a cursor"
    expected = {"type": "string", "minLength": CURSOR_LENGTH, "maxLength": CURSOR_LENGTH, "pattern": CURSOR_PATTERN}
    assert all(cursor == expected for cursor in cursors), cursors
