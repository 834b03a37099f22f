"""The worker boundary shared by the local app and Modal: validate, run, and shape the contract's answer."""

from typing import Any

from pydantic import ValidationError

from contracts.errors import WORKER_ERROR_HTTP_STATUS, WorkerErrorCode
from contracts.worker import WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget
from gpu.engine.errors import WorkerFailure, validation_error
from gpu.serve.serving import ServingEngine


def run_request(
    engine: ServingEngine | None,
    request: WorkerRequest,
    load_error: WorkerFailure | None = None,
    budget: RequestBudget | None = None,
) -> WorkerSuccess | WorkerError:
    """The engine's answer (it never raises), or MODEL_LOAD_FAILED while no engine is loaded. `budget` started
    when the request arrived; cancelling it stops the request at its next step."""
    if engine is None:
        failure = load_error or WorkerFailure(WorkerErrorCode.MODEL_LOAD_FAILED, "model is not loaded (yet)")
        return failure.to_error(request.request_id)
    return engine.generate(request, budget)


def status_and_body(outcome: WorkerSuccess | WorkerError) -> tuple[int, dict[str, Any]]:
    """The contract's HTTP status and JSON body for an outcome."""
    if isinstance(outcome, WorkerSuccess):
        return 200, outcome.model_dump(mode="json")
    return WORKER_ERROR_HTTP_STATUS[outcome.error_code], outcome.model_dump(mode="json")


def outcome_for_payload(
    engine: ServingEngine | None,
    payload: Any,
    load_error: WorkerFailure | None = None,
    budget: RequestBudget | None = None,
) -> WorkerSuccess | WorkerError:
    """Validate and generate: the outcome (INVALID_REQUEST for a bad payload), never a raise. A `budget` made
    when the payload arrived (its `timeout_seconds` is taken from the request when it has none) can be canceled
    from another thread to stop the request at its next denoising step."""
    try:
        request = WorkerRequest.model_validate(payload)
    except ValidationError as exc:
        return validation_error(exc.errors())
    if budget is not None and budget.timeout_seconds is None:
        budget.timeout_seconds = request.timeout_seconds
    return run_request(engine, request, load_error, budget)


def handle_payload(
    engine: ServingEngine | None,
    payload: Any,
    load_error: WorkerFailure | None = None,
    budget: RequestBudget | None = None,
) -> tuple[int, dict[str, Any]]:
    """`outcome_for_payload` shaped as the contract's HTTP status and JSON body."""
    return status_and_body(outcome_for_payload(engine, payload, load_error, budget))
