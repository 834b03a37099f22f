"""Identity's committed OpenAPI document matches the code, and documents auth and errors on every route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.lora_targets import KNOWN_BASE_MODELS
from services.common.app.openapi import document_text
from services.identity.main import build_app
from services.identity.schemas import MAX_SINGLE_PUT_BYTES

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi" / "identity.json"


def test_the_committed_document_is_the_one_the_code_serves() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == document_text(build_app()), (
        "docs/openapi/identity.json is out of date: run `python -m services.identity openapi`"
    )


def operations() -> list[tuple[str, str, dict[str, object]]]:
    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]


@pytest.mark.parametrize(("method", "path", "operation"), operations(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_operation_needs_a_bearer_token_and_documents_its_errors_with_the_uniform_body(
    method: str, path: str, operation: dict[str, object]
) -> None:
    responses = operation["responses"]
    assert isinstance(responses, dict)
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"401", "422"} <= set(responses)
    if "{" in path:
        assert "404" in responses
    for status, response in responses.items():
        if status.startswith("4"):
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_text_rules_are_in_the_schema_for_clients_to_see() -> None:
    schemas = json.loads(COMMITTED.read_text(encoding="utf-8"))["components"]["schemas"]
    name = schemas["AvatarCreate"]["properties"]["name"]
    assert (name["maxLength"], name["minLength"]) == (100, 1)
    assert name["pattern"].startswith("^[^\\x00-\\x1f")
    assert schemas["AvatarCreate"]["additionalProperties"] is False
    assert schemas["LoraCreate"]["required"] == ["size_bytes"]


def test_every_bound_reaches_the_schema_as_json_schema_keywords() -> None:
    # A validator placed before a Field's bounds makes pydantic write them as "ge"/"le", which no client reads.
    text = COMMITTED.read_text(encoding="utf-8")
    for keyword in ('"ge"', '"le"', '"gt"', '"lt"'):
        assert keyword not in text


@pytest.mark.parametrize("model", ["LoraCreate", "LoraImport"])
def test_the_schema_names_every_base_model_a_deployment_can_accept_and_no_other(model: str) -> None:
    # Guards: `base_model` documented as any text, which a deployment refuses with a 422 (a fuzzer's "schema-valid
    # request rejected"). LORA_BASE_MODELS may list only these (the settings refuse a model without a layer table).
    schemas = json.loads(COMMITTED.read_text(encoding="utf-8"))["components"]["schemas"]
    assert schemas[model]["properties"]["base_model"]["enum"] == list(KNOWN_BASE_MODELS)


def test_a_lora_size_is_bounded_by_the_largest_single_put() -> None:
    size = json.loads(COMMITTED.read_text(encoding="utf-8"))["components"]["schemas"]["LoraCreate"]["properties"]
    assert (size["size_bytes"]["minimum"], size["size_bytes"]["maximum"]) == (1, MAX_SINGLE_PUT_BYTES)
