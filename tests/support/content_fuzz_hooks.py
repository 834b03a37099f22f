"""Schemathesis hooks for fuzzing content (loaded by the CLI through SCHEMATHESIS_HOOKS, never by pytest): a
schema-valid submit names the fuzzing owner's ready avatar, so that some submits are accepted rather than all
answered 404 for a random avatar id."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from schemathesis import GenerationMode

# The ready avatar's id, set by tests/integration/content/test_fuzzed_api.py for the CLI it runs.
AVATAR_ID_ENV = "CONTENT_FUZZ_AVATAR_ID"


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Only positive cases: in a negative one the avatar id may be the part meant to be invalid."""
    del context
    meta = case.meta
    positive = meta is not None and meta.generation.mode is GenerationMode.POSITIVE
    if positive and isinstance(case.body, dict) and "avatar_id" in case.body:
        case.body = {**case.body, "avatar_id": os.environ[AVATAR_ID_ENV]}
    return case
