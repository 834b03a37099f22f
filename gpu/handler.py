"""The worker boundary for untyped callers (Modal): dict in, (HTTP status, dict) out, never an exception."""

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from contracts.errors import WORKER_ERROR_HTTP_STATUS, WorkerErrorCode
from contracts.worker import WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine import SdxlLoraEngine
from gpu.errors import WorkerFailure

log = logging.getLogger("gpu.handler")


def validation_error(errors: Sequence[Any]) -> WorkerError:
    """INVALID_REQUEST naming each bad field and why (pydantic's or FastAPI's error list)."""
    fields = [{"field": ".".join(str(p) for p in err["loc"] if p != "body"), "reason": err["msg"]} for err in errors]
    return WorkerError(
        error="request failed validation",
        error_code=WorkerErrorCode.INVALID_REQUEST,
        details={"fields": fields},
        retryable=False,
    )


def handle_payload(
    engine: SdxlLoraEngine | None, payload: Any, load_error: WorkerFailure | None = None
) -> tuple[int, dict[str, Any]]:
    """Validate, generate, and shape the answer; any surprise becomes GENERATION_FAILED, not a raise."""
    try:
        request = WorkerRequest.model_validate(payload)
    except ValidationError as exc:
        return 422, validation_error(exc.errors()).model_dump(mode="json")
    if engine is None:
        failure = load_error or WorkerFailure(WorkerErrorCode.MODEL_LOAD_FAILED, "model is not loaded")
        outcome: WorkerSuccess | WorkerError = failure.to_error(request.request_id)
    else:
        try:
            outcome = engine.generate(request)
        except Exception as exc:  # the engine returns errors; this is the last guard of the boundary
            log.exception("unexpected failure in the engine")
            outcome = WorkerFailure(
                WorkerErrorCode.GENERATION_FAILED, "unexpected worker failure", reason=type(exc).__name__
            ).to_error(request.request_id)
    if isinstance(outcome, WorkerSuccess):
        return 200, outcome.model_dump(mode="json")
    return WORKER_ERROR_HTTP_STATUS[outcome.error_code], outcome.model_dump(mode="json")
