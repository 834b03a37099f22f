"""A JSON value that satisfies a JSON Schema (as pydantic writes them), for example messages: named samples first."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final


class NoSample:
    """The marker a sample lookup returns when it has no value for a field."""


NO_SAMPLE: Final = NoSample()

# (object schema's title, property name, property schema) → a value, or NO_SAMPLE to let the schema decide.
SampleLookup = Callable[[str, str, Mapping[str, Any]], Any]


class UnsampleableSchemaError(ValueError):
    """The schema asks for something no generic value satisfies (a pattern): the lookup must name a sample."""


def sample_of(
    schema: Mapping[str, Any], defs: Mapping[str, Any], lookup: SampleLookup, *, date_time: str, where: str = "$"
) -> Any:
    """A value `schema` accepts: `lookup`'s sample for each property, else the schema's const, enum, example or
    non-null default, else the smallest value its type and bounds allow. Optional parts (a nullable model, an
    array) are filled rather than left empty, so that an example shows the whole shape."""
    schema = _resolved(schema, defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("examples"):
        return schema["examples"][0]
    branches = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if branches:
        concrete = [b for b in branches if _resolved(b, defs).get("type") != "null"] or branches
        return sample_of(concrete[0], defs, lookup, date_time=date_time, where=where)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return _object(schema, defs, lookup, date_time=date_time, where=where)
    if kind == "array":
        item = sample_of(schema.get("items", {}), defs, lookup, date_time=date_time, where=f"{where}[0]")
        return [item] * max(1, int(schema.get("minItems", 1)))
    if kind == "string":
        return _string(schema, date_time=date_time, where=where)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    raise UnsampleableSchemaError(f"{where}: no sample for a schema of type {kind!r}")


def _resolved(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return _resolved(defs[str(ref).rsplit("/", 1)[1]], defs)


def _object(
    schema: Mapping[str, Any], defs: Mapping[str, Any], lookup: SampleLookup, *, date_time: str, where: str
) -> dict[str, Any]:
    title = str(schema.get("title", ""))
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        value = lookup(title, name, prop)
        if value is NO_SAMPLE:
            default = prop.get("default")
            if default is not None:
                value = default
            else:
                value = sample_of(prop, defs, lookup, date_time=date_time, where=f"{where}.{name}")
        out[name] = value
    return out


def _string(schema: Mapping[str, Any], *, date_time: str, where: str) -> str:
    if schema.get("format") == "date-time":
        return date_time
    if "pattern" in schema:
        raise UnsampleableSchemaError(f"{where}: a string with pattern {schema['pattern']!r} needs a named sample")
    text = f"example {where.rsplit('.', 1)[-1]}"
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(low, "x")
    return text if high is None else text[: int(high)]


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    value: float = 1
    if low is not None and value <= low:
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    if high is not None and value >= high:
        value = high - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
    step = schema.get("multipleOf")
    if step:
        value = math.ceil(value / step) * step
    return int(value) if integer else float(value)
