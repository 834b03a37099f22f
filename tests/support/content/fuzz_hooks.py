"""Schemathesis hooks for fuzzing content (loaded by the CLI through SCHEMATHESIS_HOOKS, never by pytest): a
schema-valid submit names the fuzzing owner's ready avatar (the schema cannot know which avatars exist), the event
stream is read as its OpenAPI 3.1 document says (text), and a check holds each of its events to the form the
description gives."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jsonschema_rs
import schemathesis
from schemathesis import GenerationMode

# The ready avatar's id, set by tests/integration/content/test_fuzzed_api.py for the CLI it runs.
AVATAR_ID_ENV = "CONTENT_FUZZ_AVATAR_ID"
EVENT_STREAM = "text/event-stream"
EVENT_IDS = ("1", "2", "3")


def is_positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode is GenerationMode.POSITIVE


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Only positive cases: in a negative one the avatar id may be the part meant to be invalid."""
    del context
    if is_positive(case) and isinstance(case.body, dict) and "avatar_id" in case.body:
        case.body = {**case.body, "avatar_id": os.environ[AVATAR_ID_ENV]}
    key = case.headers.get("Idempotency-Key") if isinstance(case.headers, Mapping) else None
    if is_positive(case) and isinstance(key, str) and key:
        # A key reused with another body is rightly a 422 (the IETF Idempotency-Key draft): the schema cannot say
        # which keys were used. The key is made to depend on the body, so a repeated case still replays.
        digest = hashlib.sha256(json.dumps(case.body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        case.headers["Idempotency-Key"] = f"{key[:200]}-{digest}"
    return case


@schemathesis.deserializer(EVENT_STREAM)
def event_stream_as_text(ctx: Any, response: Any) -> list[str]:
    """The stream as one text, which its `schema` (`type: string`) describes in OpenAPI 3.1. Schemathesis 4.32
    reads a 3.1 event stream's `schema` as each event's instead (as 3.2's `itemSchema`), which would hold every
    event to `type: string`; the events themselves are judged by `event_stream_as_documented`."""
    del ctx
    return [response.content.decode("utf-8")]


def stream_blocks(text: str) -> list[dict[str, str]]:
    """The fields of each block of an SSE text (comment lines left out); text after the last blank line (a block a
    cut stream did not finish) is none. A field given twice keeps its last value (content sends each once)."""
    found: list[dict[str, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n")[:-1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            found.append(fields)
    return found


def event_data_schema(document: Mapping[str, Any]) -> dict[str, Any]:
    """What the description of content.events promises each `data:` line is, against the document's components."""
    return {
        "type": "object",
        "required": ["status", "at", "generation"],
        "properties": {
            "status": {"$ref": "#/components/schemas/GenerationStatus"},
            "at": {"type": "string", "format": "date-time"},
            "generation": {"$ref": "#/components/schemas/GenerationOut"},
        },
        "components": document["components"],
    }


def event_stream_problems(
    text: str, document: Mapping[str, Any], *, cut_short: bool, last_event_id: str | None
) -> list[str]:
    """What in an event stream differs from content.events' description (empty when nothing does)."""
    blocks = stream_blocks(text)
    events = [block for block in blocks if "data" in block]
    problems = [
        f"a block that is neither an event nor `retry`: {block}"
        for block in blocks
        if not {"data", "retry"} & set(block)
    ]
    validator = jsonschema_rs.Draft202012Validator(event_data_schema(document), validate_formats=True)
    seen = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else 0
    for event in events:
        if event.get("event") != "status" or event.get("id") not in EVENT_IDS:
            problems.append(f"not a status event with an id of {EVENT_IDS}: {str(event)[:200]}")
            continue
        if int(event["id"]) <= seen:
            problems.append(f"event {event['id']} after event {seen} (or Last-Event-ID {last_event_id})")
        seen = int(event["id"])
        try:
            data = json.loads(event["data"])
        except json.JSONDecodeError as error:
            problems.append(f"event {event['id']}: data is not JSON ({error})")
            continue
        problems.extend(f"event {event['id']}: {error.message}" for error in validator.iter_errors(data))
    if events and not cut_short and events[-1].get("id") != EVENT_IDS[-1]:
        problems.append(f"the stream ended before the final status (last event {events[-1].get('id')})")
    return problems


@schemathesis.check
def event_stream_as_documented(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 200 event stream holds what content.events' description says: `retry`, then `status` events with
    increasing ids 1–3 (after Last-Event-ID), each `data:` a JSON object {status, at, generation}, ending after the
    final status."""
    del ctx
    content_type = next(iter(response.headers.get("content-type", [""])), "")
    if response.status_code != 200 or not content_type.startswith(EVENT_STREAM):
        return None
    headers = case.headers if isinstance(case.headers, Mapping) else {}
    last_event_id = next((str(v) for k, v in headers.items() if k.lower() == "last-event-id"), None)
    problems = event_stream_problems(
        response.content.decode("utf-8"),
        case.operation.schema.raw_schema,
        cut_short=response.stream_cut_short,
        last_event_id=last_event_id,
    )
    if problems:
        raise AssertionError("the event stream is not as documented:\n" + "\n".join(problems[:10]))
    return True
