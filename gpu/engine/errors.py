"""The worker's one exception: a failure that already knows its contract error code."""

from collections.abc import Sequence
from typing import Any

from contracts.errors import WORKER_ERROR_RETRYABLE, WorkerErrorCode
from contracts.worker import WorkerError


class WorkerFailure(Exception):
    """Raised inside the worker; turned into a WorkerError at the boundary, never raised across it."""

    def __init__(self, code: WorkerErrorCode, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_error(self, request_id: str | None = None) -> WorkerError:
        return WorkerError(
            error=self.message,
            error_code=self.code,
            details=dict(self.details),
            request_id=request_id,
            retryable=WORKER_ERROR_RETRYABLE[self.code],
        )


def lora_download_failed(message: str, **details: object) -> WorkerFailure:
    return WorkerFailure(WorkerErrorCode.LORA_DOWNLOAD_FAILED, message, **details)


def lora_load_failed(message: str, **details: object) -> WorkerFailure:
    return WorkerFailure(WorkerErrorCode.LORA_LOAD_FAILED, message, **details)


def request_canceled(reason: str, **details: object) -> WorkerFailure:
    """A request stopped because someone asked (DELETE of its job, its sync caller gone, a Modal cancel).

    The contract has no code for it: GENERATION_FAILED, not retryable, with `details.canceled = true`."""
    return WorkerFailure(
        WorkerErrorCode.GENERATION_FAILED, f"request canceled: {reason}", canceled=True, reason=reason, **details
    )


def is_canceled(error: WorkerError) -> bool:
    """Whether an error answer is a cancel (see request_canceled)."""
    return error.error_code == WorkerErrorCode.GENERATION_FAILED and error.details.get("canceled") is True


def validation_error(errors: Sequence[Any]) -> WorkerError:
    """INVALID_REQUEST naming each bad field and why (pydantic's or FastAPI's error list); torch-free, so the
    local server, the handler and Modal's small web endpoints answer with the same body."""
    fields = [{"field": ".".join(str(p) for p in err["loc"] if p != "body"), "reason": err["msg"]} for err in errors]
    return WorkerError(
        error="request failed validation",
        error_code=WorkerErrorCode.INVALID_REQUEST,
        details={"fields": fields},
        retryable=False,
    )
