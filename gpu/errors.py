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
