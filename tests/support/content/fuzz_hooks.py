"""Schemathesis hooks for fuzzing content (loaded by the CLI through SCHEMATHESIS_HOOKS, never by pytest): a
schema-valid submit names the fuzzing owner's ready avatar, so that some submits are accepted rather than all
answered 404 for a random avatar id, and a schema-valid cursor is one the API issues."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import schemathesis

from tests.support.fuzz_hooks import is_positive, with_issued_cursor

# The ready avatar's id, set by tests/integration/content/test_fuzzed_api.py for the CLI it runs.
AVATAR_ID_ENV = "CONTENT_FUZZ_AVATAR_ID"


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Only positive cases: in a negative one the avatar id or the cursor may be the part meant to be invalid."""
    del context
    if is_positive(case) and isinstance(case.body, dict) and "avatar_id" in case.body:
        case.body = {**case.body, "avatar_id": os.environ[AVATAR_ID_ENV]}
    key = case.headers.get("Idempotency-Key") if isinstance(case.headers, Mapping) else None
    if is_positive(case) and isinstance(key, str) and key:
        # A key reused with another body is rightly a 422 (the IETF Idempotency-Key draft): the schema cannot say
        # which keys were used. The key is made to depend on the body, so a repeated case still replays.
        digest = hashlib.sha256(json.dumps(case.body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        case.headers["Idempotency-Key"] = f"{key[:200]}-{digest}"
    return with_issued_cursor(case)
