"""The worker endpoints a deployment names (MODAL_*): the primary and an optional fallback for `CUDA_OOM`, as the
clients the use case calls through one protocol (ports.WorkerClient), for the `LORA_PROVIDER` configured."""

from __future__ import annotations

from dataclasses import replace
from typing import assert_never

import httpx

from services.inference_gateway.ports import WorkerClient
from services.inference_gateway.settings import GatewaySettings
from services.inference_gateway.worker_client.http import ModalWorkerClient, ProviderConfig, auth_headers
from services.inference_gateway.worker_client.urls import derive_async_urls, derive_cancel_url

WorkerClients = tuple[WorkerClient, WorkerClient | None]


def provider_config(settings: GatewaySettings) -> ProviderConfig:
    """Where and how to call the worker, from the MODAL_* settings."""
    assert settings.modal_endpoint_url is not None  # the settings validator guarantees it
    return ProviderConfig(
        mode=settings.modal_mode,
        generate_url=settings.modal_endpoint_url,
        submit_url=settings.modal_submit_url,
        result_url=settings.modal_result_url,
        cancel_url=settings.modal_cancel_url,
        poll_seconds=settings.modal_poll_seconds,
        poll_wait_seconds=settings.modal_poll_wait_seconds,
        poll_outage_seconds=settings.gateway_worker_retry_seconds,
        headers=auth_headers(
            settings.modal_api_key.get_secret_value() if settings.modal_api_key else None,
            settings.modal_api_token.get_secret_value() if settings.modal_api_token else None,
        ),
    )


def fallback_provider_config(settings: GatewaySettings) -> ProviderConfig | None:
    """The fallback endpoint (MODAL_FALLBACK_ENDPOINT_URL), same mode and credentials; async URLs derived."""
    url = settings.modal_fallback_endpoint_url
    if url is None:
        return None
    primary = provider_config(settings)
    if settings.modal_mode == "sync":
        return replace(primary, generate_url=url, submit_url=None, result_url=None, cancel_url=None)
    derived = derive_async_urls(url)
    assert derived is not None  # the settings validator guarantees it
    return replace(
        primary, generate_url=url, submit_url=derived[0], result_url=derived[1], cancel_url=derive_cancel_url(url)
    )


def modal_sdxl_lora(http: httpx.AsyncClient, settings: GatewaySettings) -> WorkerClients:
    """The seed's provider: the SDXL + LoRA worker's web endpoints (Modal, or the local server)."""
    fallback = fallback_provider_config(settings)
    primary = ModalWorkerClient(http, provider_config(settings))
    return primary, ModalWorkerClient(http, fallback) if fallback is not None else None


def worker_clients(http: httpx.AsyncClient, settings: GatewaySettings) -> WorkerClients:
    """The primary client and the fallback (or None) of the configured provider (LORA_PROVIDER, validated by the
    settings; a value they accept without a case here fails the type check)."""
    match settings.lora_provider:
        case "modal_sdxl_lora":
            return modal_sdxl_lora(http, settings)
        case unknown:
            assert_never(unknown)
