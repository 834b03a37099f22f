"""Gateway settings: seed env names, endpoint resolution, async URLs, auth, refusal of bad values."""

from __future__ import annotations

from typing import get_args

import httpx
import pytest
from pydantic import ValidationError

from services.common.app.settings import describe_validation_error
from services.inference_gateway.settings import GatewaySettings
from services.inference_gateway.worker_client.endpoints import fallback_provider_config, provider_config, worker_clients
from services.inference_gateway.worker_client.urls import derive_async_urls, derive_cancel_url
from tests.support.service_log import written
from tests.support.settings_env import settings_env

BASE_ENV = {
    "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "R2_ENDPOINT_URL": "http://127.0.0.1:9000",
    "R2_ACCESS_KEY_ID": "local-access-key",
    "R2_SECRET_ACCESS_KEY": "local-secret-key",
    "R2_BUCKET_NAME": "vixenbliss",
    "MODAL_ENDPOINT_URL": "http://127.0.0.1:8003/generate",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env(monkeypatch, GatewaySettings, BASE_ENV)


def error_line(**overrides: object) -> str:
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(**overrides)  # type: ignore[arg-type]
    return describe_validation_error(GatewaySettings, caught.value)


def test_defaults(env: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings()
    assert settings.lora_provider == "modal_sdxl_lora"
    assert settings.modal_mode == "sync"
    assert settings.lora_url_ttl_seconds == 300
    assert settings.gateway_max_attempts == 3 and settings.gateway_concurrency == 1
    assert settings.database_url == "sqlite+aiosqlite:///.run/gateway.db" and settings.migrate_on_start
    assert settings.gateway_job_lease_seconds == 30.0


def test_concurrency_is_read_from_its_own_name_only_and_the_database_from_its_own(env: pytest.MonkeyPatch) -> None:
    env.setenv("GATEWAY_PREFETCH", "4")
    assert GatewaySettings().gateway_concurrency == 1  # its former name is retired: ignored
    env.setenv("GATEWAY_CONCURRENCY", "4")
    env.setenv("DATABASE_URL", "sqlite+aiosqlite:///shared.db")
    env.setenv("GATEWAY_DATABASE_URL", "postgresql+asyncpg://gw:pw-7f3k@db/gateway")
    settings = GatewaySettings()
    assert settings.gateway_concurrency == 4
    assert settings.database_url == "postgresql+asyncpg://gw:pw-7f3k@db/gateway"
    assert "pw-7f3k" in settings.secret_values()
    assert settings.topology_prefix == ""
    assert provider_config(settings).headers == {}


def test_auth_modes(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODAL_API_KEY", "wk-abc123")
    assert provider_config(GatewaySettings()).headers == {"Authorization": "Bearer wk-abc123"}
    env.setenv("MODAL_API_TOKEN", "ws-def456")
    headers = provider_config(GatewaySettings()).headers
    assert headers == {"Modal-Key": "wk-abc123", "Modal-Secret": "ws-def456"}
    assert "ws-def456" not in repr(provider_config(GatewaySettings()))
    env.setenv("MODAL_API_KEY", "")
    assert provider_config(GatewaySettings()).headers == {"Authorization": "Bearer ws-def456"}


def test_a_placeholder_key_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODAL_API_KEY", "changeme")
    assert "MODAL_API_KEY" in error_line()


def test_the_endpoint_is_required_or_derived_from_the_endpoint_id(env: pytest.MonkeyPatch) -> None:
    env.delenv("MODAL_ENDPOINT_URL")
    assert "MODAL_ENDPOINT_URL is not set" in error_line()
    env.setenv("MODAL_SDXL_LORA_ENDPOINT_ID", "acme--sdxl-lora-generate")
    assert GatewaySettings().modal_endpoint_url == "https://acme--sdxl-lora-generate.modal.run"
    env.setenv("MODAL_SDXL_LORA_ENDPOINT_ID", "not an id")
    assert "<workspace>--<label>" in error_line()


def test_async_mode_urls(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODAL_MODE", "async")
    settings = GatewaySettings()
    assert settings.modal_submit_url == "http://127.0.0.1:8003/jobs"
    assert settings.modal_result_url == "http://127.0.0.1:8003/jobs/{call_id}"
    env.setenv("MODAL_ENDPOINT_URL", "https://gpu.example.com/run")
    assert "MODAL_SUBMIT_URL and MODAL_RESULT_URL" in error_line()
    env.setenv("MODAL_SUBMIT_URL", "https://gpu.example.com/submit")
    env.setenv("MODAL_RESULT_URL", "https://gpu.example.com/result/{call_id}")
    assert GatewaySettings().modal_submit_url == "https://gpu.example.com/submit"


def test_modal_async_urls_follow_the_app_labels() -> None:
    assert derive_async_urls("https://acme--sdxl-lora-generate.modal.run") == (
        "https://acme--sdxl-lora-submit.modal.run/",
        "https://acme--sdxl-lora-result.modal.run/",
    )
    assert derive_async_urls("https://elsewhere.example/x") is None


def test_polls_ask_the_worker_to_hold_them_as_configured(env: pytest.MonkeyPatch) -> None:
    env.setenv("MODAL_MODE", "async")
    assert provider_config(GatewaySettings()).poll_wait_seconds == 30.0
    env.setenv("MODAL_POLL_WAIT_SECONDS", "0")
    assert provider_config(GatewaySettings()).poll_wait_seconds == 0.0


def test_the_cancel_url_is_derived_like_the_others(env: pytest.MonkeyPatch) -> None:
    assert (
        derive_cancel_url("https://acme--sdxl-lora-generate.modal.run") == "https://acme--sdxl-lora-cancel.modal.run/"
    )
    assert derive_cancel_url("http://127.0.0.1:8003/generate") == "http://127.0.0.1:8003/jobs/{call_id}"
    assert derive_cancel_url("https://elsewhere.example/x") is None
    env.setenv("MODAL_MODE", "async")
    assert provider_config(GatewaySettings()).cancel_url == "http://127.0.0.1:8003/jobs/{call_id}"
    env.setenv("MODAL_CANCEL_URL", "https://gpu.example.com/cancel")
    assert GatewaySettings().modal_cancel_url == "https://gpu.example.com/cancel"


def test_the_fallback_endpoint_has_the_same_mode_and_credentials(env: pytest.MonkeyPatch) -> None:
    assert fallback_provider_config(GatewaySettings()) is None
    env.setenv("MODAL_API_KEY", "wk-key-123")
    env.setenv("MODAL_API_TOKEN", "ws-secret-456")
    env.setenv("MODAL_FALLBACK_ENDPOINT_URL", "https://acme--sdxl-lora-generate-big.modal.run")
    fallback = fallback_provider_config(GatewaySettings())
    assert fallback is not None and fallback.mode == "sync"
    assert fallback.generate_url == "https://acme--sdxl-lora-generate-big.modal.run"
    assert dict(fallback.headers) == {"Modal-Key": "wk-key-123", "Modal-Secret": "ws-secret-456"}
    env.setenv("MODAL_MODE", "async")
    fallback = fallback_provider_config(GatewaySettings())
    assert fallback is not None
    assert (fallback.submit_url, fallback.result_url, fallback.cancel_url) == (
        "https://acme--sdxl-lora-submit-big.modal.run/",
        "https://acme--sdxl-lora-result-big.modal.run/",
        "https://acme--sdxl-lora-cancel-big.modal.run/",
    )
    env.setenv("MODAL_FALLBACK_ENDPOINT_URL", "https://gpu.example.com/run")
    assert "MODAL_FALLBACK_ENDPOINT_URL" in error_line()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODAL_MODE", "batch"),
        ("LORA_PROVIDER", "replicate"),
        ("GATEWAY_MAX_ATTEMPTS", "0"),
        ("MODAL_ENDPOINT_URL", "ftp://worker/generate"),
        ("MODAL_TIMEOUT_SECONDS", "-1"),
        # Past what the local worker's `?wait=` accepts (60): every poll would be refused.
        ("MODAL_POLL_WAIT_SECONDS", "61"),
        ("MODAL_POLL_WAIT_SECONDS", "-1"),
    ],
)
def test_bad_values_name_the_variable(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    assert name in error_line()


def test_secret_values_cover_every_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("RABBITMQ_URL", "amqp://vixen:rabbit-pw-123@127.0.0.1:5672/")
    env.setenv("MODAL_API_KEY", "wk-abc123")
    values = GatewaySettings().secret_values()
    assert {"rabbit-pw-123", "local-secret-key", "wk-abc123"} <= set(values)


def test_the_service_log_never_shows_the_broker_password_or_the_worker_key(env: pytest.MonkeyPatch) -> None:
    env.setenv("RABBITMQ_URL", "amqp://vixen:rabbit-pw-123@127.0.0.1:5672/")
    env.setenv("MODAL_API_KEY", "wk-abc123")

    text = written(
        GatewaySettings().secret_values(),
        ("broker refused the login 'vixen'/'%s'", ("rabbit-pw-123",)),
        ("worker refused key %s", ("wk-abc123",)),
    )

    assert text.count("\n") == 2
    assert "rabbit-pw-123" not in text and "wk-abc123" not in text


async def test_every_lora_provider_the_settings_accept_has_an_implementation(env: pytest.MonkeyPatch) -> None:
    accepted = set(get_args(GatewaySettings.model_fields["lora_provider"].annotation))
    async with httpx.AsyncClient() as http:
        for name in accepted:
            env.setenv("LORA_PROVIDER", name)
            worker, fallback = worker_clients(http, GatewaySettings())
            assert worker.mode == "sync" and fallback is None
        # Only what the settings accept has a case: any other name is refused, not silently given a default.
        with pytest.raises(AssertionError):
            worker_clients(http, GatewaySettings().model_copy(update={"lora_provider": "replicate"}))
