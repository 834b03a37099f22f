"""The worker's one exception: a failure that already knows its contract error code."""

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
