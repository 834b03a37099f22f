"""Sample values from JSON Schemas: named samples first, then what each keyword allows."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from contracts.schema_sample import NO_SAMPLE, UnsampleableSchemaError, sample_of

WHEN = "2026-01-15T12:00:00Z"


def no_samples(owner: str, name: str, schema: Any) -> Any:
    return NO_SAMPLE


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 64, "maximum": 2048, "multipleOf": 8},
        {"type": "integer", "exclusiveMinimum": 5},
        {"type": "number", "exclusiveMaximum": 0.5},
        {"type": "number", "minimum": -3, "maximum": -1},
        {"type": "string", "minLength": 40},
        {"type": "string", "maxLength": 3},
        {"type": "array", "items": {"type": "string"}, "minItems": 3},
        {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 2}]},
        {"type": "object", "properties": {"a": {"type": "integer", "default": 7}}, "required": ["a"]},
        {"enum": ["b", "c"]},
        {"const": "fixed"},
    ],
)
def test_the_sample_satisfies_its_schema(schema: dict[str, Any]) -> None:
    value = sample_of(schema, {}, no_samples, date_time=WHEN)
    jsonschema_rs.Draft202012Validator(schema).validate(value)


def test_refs_resolve_and_named_samples_win_over_defaults() -> None:
    defs = {"Inner": {"title": "Inner", "type": "object", "properties": {"n": {"type": "integer", "default": 1}}}}
    schema = {
        "type": "object",
        "properties": {"inner": {"$ref": "#/$defs/Inner"}, "at": {"type": "string", "format": "date-time"}},
    }

    def lookup(owner: str, name: str, prop: Any) -> Any:
        return 42 if (owner, name) == ("Inner", "n") else NO_SAMPLE

    assert sample_of(schema, defs, lookup, date_time=WHEN) == {"inner": {"n": 42}, "at": WHEN}
    assert sample_of(schema, defs, no_samples, date_time=WHEN) == {"inner": {"n": 1}, "at": WHEN}


def test_a_pattern_needs_a_named_sample() -> None:
    schema = {"type": "object", "properties": {"digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}
    with pytest.raises(UnsampleableSchemaError, match=r"\$\.digest"):
        sample_of(schema, {}, no_samples, date_time=WHEN)
