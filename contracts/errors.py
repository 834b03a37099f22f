"""Error codes of the worker contract and of the gateway, with their HTTP statuses and retry advice."""

from enum import StrEnum


class WorkerErrorCode(StrEnum):
    """The six codes of the seed worker contract, plus INVALID_REQUEST (an extension)."""

    LORA_DOWNLOAD_FAILED = "LORA_DOWNLOAD_FAILED"
    LORA_LOAD_FAILED = "LORA_LOAD_FAILED"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    GENERATION_FAILED = "GENERATION_FAILED"
    TIMEOUT = "TIMEOUT"
    CUDA_OOM = "CUDA_OOM"
    # Extension: the request body failed validation (HTTP 422); nothing was run.
    INVALID_REQUEST = "INVALID_REQUEST"


class GatewayErrorCode(StrEnum):
    """Codes the inference gateway adds when the failure is not inside the worker."""

    WORKER_UNAVAILABLE = "WORKER_UNAVAILABLE"
    INVALID_WORKER_RESPONSE = "INVALID_WORKER_RESPONSE"
    STORAGE_FAILED = "STORAGE_FAILED"


# The HTTP status the worker answers with for each error code. Stable: clients may rely on it,
# but the error_code in the body is the authority.
WORKER_ERROR_HTTP_STATUS: dict[WorkerErrorCode, int] = {
    WorkerErrorCode.INVALID_REQUEST: 422,
    WorkerErrorCode.LORA_DOWNLOAD_FAILED: 424,
    WorkerErrorCode.LORA_LOAD_FAILED: 422,
    WorkerErrorCode.MODEL_LOAD_FAILED: 503,
    WorkerErrorCode.GENERATION_FAILED: 500,
    WorkerErrorCode.TIMEOUT: 504,
    WorkerErrorCode.CUDA_OOM: 503,
}

# Whether trying the same request again can succeed. A LoRA download can fail on an expired URL,
# which the gateway fixes by signing a fresh one; a bad LoRA file stays bad.
WORKER_ERROR_RETRYABLE: dict[WorkerErrorCode, bool] = {
    WorkerErrorCode.INVALID_REQUEST: False,
    WorkerErrorCode.LORA_DOWNLOAD_FAILED: True,
    WorkerErrorCode.LORA_LOAD_FAILED: False,
    WorkerErrorCode.MODEL_LOAD_FAILED: True,
    WorkerErrorCode.GENERATION_FAILED: False,
    WorkerErrorCode.TIMEOUT: True,
    WorkerErrorCode.CUDA_OOM: True,
}

# `details.reason` of a LORA_DOWNLOAD_FAILED whose file arrived but is not the one asked for (its sha256 differs
# from lora_sha256): downloading again cannot help, so the gateway does not retry it.
LORA_SHA256_MISMATCH_REASON = "sha256_mismatch"
