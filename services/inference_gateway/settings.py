"""Gateway configuration from the seed's environment names (LORA_PROVIDER, MODAL_*, R2_*, GATEWAY_*)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.app.settings import (
    BrokerSettings,
    DatabasePoolSettings,
    GenerationBudgetSettings,
    LoggingSettings,
    StorageSettings,
    TopologySettings,
    connection_url_secrets,
    database_url_field,
    migrate_on_start_field,
)
from services.common.http.edge import EdgeSettings
from services.inference_gateway.worker_client.urls import (
    MODAL_GENERATE_LABEL,
    derive_async_urls,
    derive_cancel_url,
    url_from_endpoint_id,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/gateway.db"


class GatewayDatabaseSettings(DatabasePoolSettings):
    """The job table's database alone: all that `python -m services.inference_gateway migrate` reads."""

    # GATEWAY_DATABASE_URL, else DATABASE_URL; the embedded SQLite default serves one gateway process.
    database_url: str = database_url_field("gateway", DEFAULT_DATABASE_URL)
    # GATEWAY_MIGRATE_ON_START: false when a separate step runs `migrate`.
    migrate_on_start: bool = migrate_on_start_field("gateway")


class GatewaySettings(
    EdgeSettings,
    BrokerSettings,
    StorageSettings,
    LoggingSettings,
    TopologySettings,
    GenerationBudgetSettings,
    GatewayDatabaseSettings,
):
    """Everything the inference gateway reads at start; a bad value stops it with one clear line. The generation
    budget is content's (the same CONTENT_* variables): a request over it is failed without calling the worker."""

    lora_provider: Literal["modal_sdxl_lora"] = Field(default="modal_sdxl_lora", validation_alias="LORA_PROVIDER")
    # The sync generate URL (local worker: http://127.0.0.1:8003/generate).
    modal_endpoint_url: str | None = Field(default=None, validation_alias="MODAL_ENDPOINT_URL")
    # `<workspace>--<label>` of the deployed generate endpoint; gives the URL when MODAL_ENDPOINT_URL is unset.
    modal_sdxl_lora_endpoint_id: str | None = Field(default=None, validation_alias="MODAL_SDXL_LORA_ENDPOINT_ID")
    # Both set: Modal proxy auth (Modal-Key / Modal-Secret). Only one: sent as a bearer token.
    modal_api_key: SecretStr | None = Field(default=None, validation_alias="MODAL_API_KEY")
    modal_api_token: SecretStr | None = Field(default=None, validation_alias="MODAL_API_TOKEN")
    modal_mode: Literal["sync", "async"] = Field(default="sync", validation_alias="MODAL_MODE")
    # Async mode: where jobs are submitted (POST) and polled (GET; {call_id} is replaced, else ?call_id=).
    modal_submit_url: str | None = Field(default=None, validation_alias="MODAL_SUBMIT_URL")
    modal_result_url: str | None = Field(default=None, validation_alias="MODAL_RESULT_URL")
    # Async mode: where a job is canceled (DELETE; {call_id} as for the result URL). Derived like the others;
    # unset and not derivable: a canceled or abandoned job is not canceled on the worker (a warning says so).
    modal_cancel_url: str | None = Field(default=None, validation_alias="MODAL_CANCEL_URL")
    # A second generate endpoint (a larger GPU) that gets one more attempt after CUDA_OOM; same mode and auth.
    # In async mode its submit, result and cancel URLs are derived from it.
    modal_fallback_endpoint_url: str | None = Field(default=None, validation_alias="MODAL_FALLBACK_ENDPOINT_URL")
    # Async mode: the longest pause between polls (after a failed poll, or for a worker that ignores `wait`).
    modal_poll_seconds: float = Field(default=2.0, gt=0, le=60, validation_alias="MODAL_POLL_SECONDS")
    # Async mode: how long each poll asks the worker to hold its answer for the job to end (`?wait=`; 0: never).
    # At most 60: what the local worker accepts (the Modal result endpoint cuts a longer wait to its own cap).
    modal_poll_wait_seconds: float = Field(default=30.0, ge=0, le=60, validation_alias="MODAL_POLL_WAIT_SECONDS")
    modal_timeout_seconds: float = Field(default=600.0, gt=0, le=3600, validation_alias="MODAL_TIMEOUT_SECONDS")

    lora_url_ttl_seconds: int = Field(default=300, ge=10, le=7 * 24 * 3600, validation_alias="LORA_URL_TTL_SECONDS")
    gateway_max_attempts: int = Field(default=3, ge=1, le=10, validation_alias="GATEWAY_MAX_ATTEMPTS")
    # How long the upload of an image already made is retried (past GATEWAY_MAX_ATTEMPTS) while storage is down.
    gateway_upload_retry_seconds: float = Field(
        default=120.0, ge=0, le=3600, validation_alias="GATEWAY_UPLOAD_RETRY_SECONDS"
    )
    # How long an unreachable worker (refused/reset connections, 5xx or 429 without a contract body) is retried past
    # GATEWAY_MAX_ATTEMPTS, from its first such failure: a worker restart shorter than this fails no generation.
    gateway_worker_retry_seconds: float = Field(
        default=60.0, ge=0, le=3600, validation_alias="GATEWAY_WORKER_RETRY_SECONDS"
    )
    # Jobs run at once by this process, i.e. concurrent worker calls.
    gateway_concurrency: int = Field(default=1, ge=1, le=100, validation_alias="GATEWAY_CONCURRENCY")
    # A running job's lease: renewed every third of it; a job whose runner stopped is taken over once it ends.
    gateway_job_lease_seconds: float = Field(default=30.0, ge=1, le=600, validation_alias="GATEWAY_JOB_LEASE_SECONDS")
    # How long a finished job is kept (a duplicate request within it re-announces the result, never reruns).
    gateway_job_retention_hours: float = Field(
        default=168.0, gt=0, le=24 * 365, validation_alias="GATEWAY_JOB_RETENTION_HOURS"
    )
    # Exponential backoff between attempts: base × 2^(attempt-1), capped, half of it random (jitter).
    gateway_backoff_base_seconds: float = Field(
        default=1.0, ge=0, le=60, validation_alias="GATEWAY_BACKOFF_BASE_SECONDS"
    )
    gateway_backoff_max_seconds: float = Field(
        default=30.0, ge=0, le=600, validation_alias="GATEWAY_BACKOFF_MAX_SECONDS"
    )

    @field_validator("modal_api_key", "modal_api_token", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # An empty optional credential is "not given", not a placeholder to refuse.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "modal_endpoint_url",
        "modal_submit_url",
        "modal_result_url",
        "modal_cancel_url",
        "modal_fallback_endpoint_url",
        "modal_sdxl_lora_endpoint_id",
    )
    @classmethod
    def _blank_means_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _resolve_endpoints(self) -> GatewaySettings:
        if self.modal_endpoint_url is None and self.modal_sdxl_lora_endpoint_id is not None:
            self.modal_endpoint_url = url_from_endpoint_id(self.modal_sdxl_lora_endpoint_id)
        if self.modal_endpoint_url is None:
            raise ValueError("MODAL_ENDPOINT_URL is not set (nor MODAL_SDXL_LORA_ENDPOINT_ID)")
        _check_http_url("MODAL_ENDPOINT_URL", self.modal_endpoint_url)
        if self.modal_mode == "async":
            derived = derive_async_urls(self.modal_endpoint_url)
            self.modal_submit_url = self.modal_submit_url or (derived[0] if derived else None)
            self.modal_result_url = self.modal_result_url or (derived[1] if derived else None)
            if self.modal_submit_url is None or self.modal_result_url is None:
                raise ValueError(
                    "MODAL_MODE=async needs MODAL_SUBMIT_URL and MODAL_RESULT_URL (they cannot be derived from "
                    "MODAL_ENDPOINT_URL); set them, or use MODAL_MODE=sync"
                )
            _check_http_url("MODAL_SUBMIT_URL", self.modal_submit_url)
            _check_http_url("MODAL_RESULT_URL", self.modal_result_url)
            self.modal_cancel_url = self.modal_cancel_url or derive_cancel_url(self.modal_endpoint_url)
            if self.modal_cancel_url is not None:
                _check_http_url("MODAL_CANCEL_URL", self.modal_cancel_url)
        if self.modal_fallback_endpoint_url is not None:
            _check_http_url("MODAL_FALLBACK_ENDPOINT_URL", self.modal_fallback_endpoint_url)
            if self.modal_mode == "async" and derive_async_urls(self.modal_fallback_endpoint_url) is None:
                raise ValueError(
                    "MODAL_FALLBACK_ENDPOINT_URL in async mode must be a local worker's /generate or a Modal "
                    f"{MODAL_GENERATE_LABEL} URL (its submit and result URLs are derived from it)"
                )
        if self.gateway_backoff_max_seconds < self.gateway_backoff_base_seconds:
            raise ValueError("GATEWAY_BACKOFF_MAX_SECONDS must be at least GATEWAY_BACKOFF_BASE_SECONDS")
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redaction filter."""
        values = [
            self.rabbitmq_url.get_secret_value(),
            self.r2_access_key_id.get_secret_value(),
            self.r2_secret_access_key.get_secret_value(),
            # The broker's password, and any database URL's (with the URL that carries it).
            *connection_url_secrets(self),
        ]
        values += [s.get_secret_value() for s in (self.modal_api_key, self.modal_api_token) if s is not None]
        return values


def _check_http_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host")
