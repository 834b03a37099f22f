"""The GPU worker HTTP contract: request, success and error bodies (the seed's fields, plus optional extensions)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.errors import WorkerErrorCode

MAX_SEED = 2**32 - 1
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]


class WorkerRequest(BaseModel):
    """What the gateway sends the worker: one image, one (optional) LoRA."""

    # Unknown fields are ignored so that an older worker accepts a newer gateway's request.
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    lora_url: str | None = Field(
        default=None, max_length=4096, description="presigned GET URL of the LoRA .safetensors; null for none"
    )
    lora_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=28, ge=1, le=100)
    cfg: float = Field(default=5.5, ge=0.0, le=30.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    # Extensions (optional).
    request_id: str | None = Field(default=None, max_length=128)
    lora_sha256: Sha256Hex | None = None
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="time budget for this request; the worker's default if null"
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value


class ModelInfo(BaseModel):
    """Which model produced the image."""

    base_model: str
    lora_applied: bool
    lora_scale: float


LoraSource = Literal["none", "download", "disk_cache", "memory_cache"]


class Timings(BaseModel):
    """Where the time of one request went, in milliseconds (extension)."""

    download_ms: float = 0.0
    load_ms: float = 0.0
    denoise_ms: float = 0.0
    decode_encode_ms: float = 0.0
    restore_ms: float = 0.0
    total_ms: float = 0.0
    lora_source: LoraSource = "none"


class WorkerSuccess(BaseModel):
    """A generated image."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    image_base64: str
    generation_time_seconds: float
    model_info: ModelInfo
    request_id: str | None = None
    lora_sha256: str | None = None
    seed: int | None = None
    timings: Timings | None = None


class WorkerError(BaseModel):
    """A failed request: never raised across the worker boundary, always returned in this shape."""

    model_config = ConfigDict(extra="ignore")

    error: str
    error_code: WorkerErrorCode
    details: dict[str, object] = Field(default_factory=dict)
    request_id: str | None = None
    retryable: bool | None = None


JobState = Literal["pending", "running", "completed", "failed"]


class JobSubmitted(BaseModel):
    """Answer to an async submit: the id to poll."""

    call_id: str


class JobStatus(BaseModel):
    """Answer to a poll while the job has no result yet."""

    call_id: str
    status: JobState
