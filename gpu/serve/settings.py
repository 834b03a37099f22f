"""Worker configuration from the environment (MODEL_DIR, WORKER_MODE, LORA_* limits, WORKER_API_KEY)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gpu.serve.image_sizes import parse_sizes

MiB = 1024 * 1024
GiB = 1024 * MiB


class WorkerSettings(BaseSettings):
    """Everything the engine, the LoRA store and the HTTP app need to know."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    model_dir: Path = Field(default=Path(".cache/tiny-sdxl"), alias="MODEL_DIR")
    # Build the tiny random-weight model into MODEL_DIR when it is missing (dev, demo, tests only).
    build_tiny_model: bool = Field(default=False, alias="WORKER_BUILD_TINY_MODEL")
    base_model_name: str | None = Field(default=None, alias="BASE_MODEL_NAME")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", alias="WORKER_DEVICE")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(default="auto", alias="WORKER_DTYPE")
    # torch.compile of the UNet (gpu/engine/compiled.py): auto = on a GPU only.
    compile: Literal["auto", "on", "off"] = Field(default="auto", alias="WORKER_COMPILE")
    # Where compiled code is kept between containers (gpu/engine/compile_cache.py); None: every process compiles afresh.
    compile_cache_dir: Path | None = Field(default=None, alias="WORKER_COMPILE_CACHE_DIR")
    # Image sizes ("1024x1024,832x1216") generated once before serving (gpu/serve/warmup.py): with WORKER_COMPILE, their
    # compiled code is loaded or compiled then, not on a user's first request of that size.
    warmup_sizes: Annotated[list[tuple[int, int]], NoDecode] = Field(default_factory=list, alias="WORKER_WARMUP_SIZES")
    # VAE decode in half precision, decoded again in fp32 only on overflow (gpu/engine/decode.py): auto = unless the
    # VAE's config asks for the fp32 upcast (SDXL's original VAE does; the fp16-fix VAE does not).
    vae_half: Literal["auto", "on", "off"] = Field(default="auto", alias="WORKER_VAE_HALF")

    # local: http allowed to loopback hosts (dev, tests); production: https to allow-listed hosts only.
    mode: Literal["local", "production"] = Field(default="production", alias="WORKER_MODE")
    lora_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="LORA_ALLOWED_HOSTS")
    lora_max_bytes: int = Field(default=512 * MiB, gt=0, alias="LORA_MAX_BYTES")
    lora_connect_timeout_seconds: float = Field(default=5.0, gt=0, alias="LORA_CONNECT_TIMEOUT_SECONDS")
    lora_download_timeout_seconds: float = Field(default=60.0, gt=0, alias="LORA_DOWNLOAD_TIMEOUT_SECONDS")
    lora_cache_dir: Path | None = Field(default=None, alias="LORA_CACHE_DIR")
    lora_cache_memory_bytes: int = Field(default=2 * GiB, ge=0, alias="LORA_CACHE_MEMORY_BYTES")
    lora_cache_disk_bytes: int = Field(default=20 * GiB, ge=0, alias="LORA_CACHE_DISK_BYTES")

    # Where the untouched originals of LoRA-touched layers live: beside the weights (fastest) or on the CPU.
    lora_pristine_device: Literal["same", "cpu"] = Field(default="same", alias="LORA_PRISTINE_DEVICE")
    request_timeout_seconds: float = Field(default=300.0, gt=0, alias="REQUEST_TIMEOUT_SECONDS")
    # Local async mode: jobs waiting or running at once; a submit past it answers 429 (never an unbounded queue).
    max_pending_jobs: int = Field(default=64, ge=1, le=10_000, alias="WORKER_MAX_PENDING_JOBS")
    api_key: SecretStr | None = Field(default=None, alias="WORKER_API_KEY")

    @field_validator("lora_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        # Comma-separated in the environment: "abc.r2.cloudflarestorage.com,.example.com".
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    @field_validator("warmup_sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: object) -> object:
        return parse_sizes(value) if isinstance(value, str) else value

    @field_validator("api_key")
    @classmethod
    def _no_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value
