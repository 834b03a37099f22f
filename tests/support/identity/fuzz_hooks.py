"""Schemathesis hooks for fuzzing identity (loaded by the CLI through SCHEMATHESIS_HOOKS, never by pytest): in a
schema-valid case, what the schema cannot know is made what the deployment issued or accepts: the cursor, the base
model and the LoRA size (deployment settings, not schema bounds), and no reference to a LoRA id that was never
issued; so that `positive_data_acceptance` judges the rest of the request."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

from tests.support.fuzz_hooks import is_positive, with_issued_cursor

# One base model the identity under fuzz accepts, set by tests/integration/identity/test_fuzzed_api.py.
BASE_MODEL_ENV = "IDENTITY_FUZZ_BASE_MODEL"
# The largest LoRA file it accepts (its lora_max_bytes).
MAX_LORA_BYTES_ENV = "IDENTITY_FUZZ_MAX_LORA_BYTES"
# Whether an object lies at an import's `object_key` (and is a LoRA) is the bucket's state, not the schema's: a 422
# naming object_key is a right answer there.
CONFIG = """
[[operations]]
include-path = "/api/v1/admin/loras/import"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Only positive cases: in a negative one the base model or the id may be the part meant to be invalid."""
    del context
    if is_positive(case) and isinstance(case.body, dict):
        body = dict(case.body)
        if "base_model" in body:
            body["base_model"] = os.environ[BASE_MODEL_ENV]
        size = body.get("size_bytes")
        if isinstance(size, int | float) and not isinstance(size, bool):
            # 548126.0 is a valid integer too (JSON Schema): the type sent is kept.
            body["size_bytes"] = type(size)(min(size, int(os.environ[MAX_LORA_BYTES_ENV])))
        if body.get("active_lora_id") is not None:
            # A random id is no LoRA of this avatar (rightly a 422 naming the field, as a random path id is a 404).
            body["active_lora_id"] = None
        case.body = body
    return with_issued_cursor(case)
