"""Content's committed OpenAPI document matches the code, and documents auth and errors on every route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.app.openapi import document_text
from services.content.main import build_app

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi" / "content.json"
EVENTS_PATH = "/api/v1/content/{generation_id}/events"


def test_the_committed_document_is_the_one_the_code_serves() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == document_text(build_app()), (
        "docs/openapi/content.json is out of date: run `python -m services.content openapi`"
    )


def document() -> dict[str, Any]:
    return dict(json.loads(COMMITTED.read_text(encoding="utf-8")))


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    found = [(method, path, op) for path, item in document()["paths"].items() for method, op in item.items()]
    assert len(found) >= 7, found  # never an empty parametrization that passes for want of routes
    return found


@pytest.mark.parametrize(("method", "path", "operation"), operations(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_operation_needs_a_bearer_token_and_documents_its_errors_with_the_uniform_body(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    responses = operation["responses"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"401", "422"} <= set(responses)
    if "{" in path:
        assert "404" in responses
    for status, response in responses.items():
        if status.startswith("4"):
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_the_event_stream_is_documented_as_text_with_its_events_described_and_its_signed_link_parameters() -> None:
    whole = document()
    operation = whole["paths"][EVENTS_PATH]["get"]
    success = operation["responses"]["200"]
    assert list(success["content"]) == ["text/event-stream"]
    # The body as OpenAPI 3.1 describes any body: text (a JSON-object schema here, one event's, made
    # openapi-python-client 0.29.1 call `from_dict(response.text)` on the stream).
    assert success["content"]["text/event-stream"]["schema"] == {"type": "string"}
    # The events' form is in the description, naming models the document holds.
    description = success["description"]
    for words in ("`event: status`", "`id:` 1 (queued), 2 (running) or 3 (final", "`data:`", "`retry: 2000`"):
        assert words in description, words
    for model in ("GenerationStatus", "GenerationOut"):
        assert model in description and model in whole["components"]["schemas"], model
    parameters = {(p["in"], p["name"]) for p in operation["parameters"]}
    assert {("query", "expires"), ("query", "signature"), ("header", "Last-Event-ID")} <= parameters


def test_the_submit_documents_its_refusals_and_preferences() -> None:
    operation = document()["paths"]["/api/v1/content/generate"]["post"]
    assert {"202", "404", "409", "429"} <= set(operation["responses"])
    # Where the answered generation can be followed (OpenAPI links, for clients and fuzzers that chain calls).
    links = operation["responses"]["202"]["links"]
    assert {name: link["operationId"] for name, link in links.items()} == {
        "get": "content.get",
        "cancel": "content.cancel",
        "events": "content.events",
    }
    assert all(link["parameters"] == {"generation_id": "$response.body#/id"} for link in links.values())
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"prefer", "Idempotency-Key"} <= {h if h == "Idempotency-Key" else h.lower() for h in headers}
    assert document()["components"]["schemas"]["GenerateRequest"]["additionalProperties"] is False


def test_every_bound_reaches_the_schema_as_json_schema_keywords() -> None:
    # A validator placed before a Field's bounds makes pydantic write them as "ge"/"le", which no client reads.
    text = COMMITTED.read_text(encoding="utf-8")
    for keyword in ('"ge"', '"le"', '"gt"', '"lt"'):
        assert keyword not in text


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def test_every_reference_in_the_document_resolves_within_it() -> None:
    # A model's own JSON schema refers to its nested models under a local "$defs", which means nothing once it is
    # inlined in an OpenAPI document (a client generator or schemathesis cannot resolve "#/$defs/...").
    whole = document()
    dangling = []
    for reference in sorted(set(references(whole))):
        node: Any = whole
        for part in reference.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if not reference.startswith("#/") or node is None:
            dangling.append(reference)
    assert dangling == []
