"""Assembly of the gateway: settings → broker, storage, provider client, service, consumers, HTTP app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from aio_pika.abc import AbstractRobustConnection
from fastapi import FastAPI

from contracts.topology import GATEWAY_GENERATION_CANCELED, GATEWAY_GENERATION_REQUESTED, SERVICE_INFERENCE_GATEWAY
from services.common import health
from services.common.consumer import Consumer
from services.common.entrypoint import serve
from services.common.http_errors import install_error_handlers
from services.common.runtime import open_broker, running_consumers
from services.common.storage import ObjectStorage, StorageConfig
from services.inference_gateway.api import router
from services.inference_gateway.consumers import generation_canceled_handler, generation_requested_handler
from services.inference_gateway.metrics import Metrics
from services.inference_gateway.providers import worker_clients
from services.inference_gateway.publisher import BrokerResultPublisher
from services.inference_gateway.retries import RetryPolicy
from services.inference_gateway.service import GenerationService
from services.inference_gateway.settings import GatewaySettings

log = logging.getLogger("services.inference_gateway")

DEFAULT_PORT = 8002


@dataclass
class GatewayRuntime:
    """The running parts the routes report on."""

    settings: GatewaySettings
    connection: AbstractRobustConnection
    consumers: tuple[Consumer, ...]
    metrics: Metrics

    def metrics_text(self) -> str:
        """The counters, Prometheus text."""
        return self.metrics.render()


@asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[GatewayRuntime]:
    """Connect, declare the topology, start consuming; on exit stop consuming (draining) and close it all."""
    metrics = Metrics()
    storage = ObjectStorage(StorageConfig.from_settings(settings))
    # Modal answers a web call longer than 150 s with a 303 to the result: the provider follows it itself,
    # keeping the credentials to the worker's own origin.
    http = httpx.AsyncClient(follow_redirects=False)
    worker, fallback = worker_clients(http, settings)
    try:
        async with open_broker(
            settings.rabbitmq_url.get_secret_value(), settings.topology_prefix, service=SERVICE_INFERENCE_GATEWAY
        ) as broker:
            service = GenerationService(
                worker,
                storage,
                BrokerResultPublisher(broker.publisher),
                policy=RetryPolicy(
                    max_attempts=settings.gateway_max_attempts,
                    backoff_base_seconds=settings.gateway_backoff_base_seconds,
                    backoff_max_seconds=settings.gateway_backoff_max_seconds,
                ),
                lora_url_ttl_seconds=settings.lora_url_ttl_seconds,
                worker_timeout_seconds=settings.modal_timeout_seconds,
                metrics=metrics,
                secrets=settings.secret_values(),
                fallback=fallback,
            )
            queue = broker.topology.queue(GATEWAY_GENERATION_REQUESTED).name
            requests = Consumer(
                broker.connection,
                broker.topology.queue(GATEWAY_GENERATION_REQUESTED),
                generation_requested_handler(service),
                prefetch=settings.gateway_prefetch,
            )
            # Its own consumer, started first: a cancel is recorded at once, not after the requests ahead of it.
            cancel_queue = broker.topology.queue(GATEWAY_GENERATION_CANCELED).name
            cancels = Consumer(
                broker.connection,
                broker.topology.queue(GATEWAY_GENERATION_CANCELED),
                generation_canceled_handler(service),
            )
            consumers = (cancels, requests)
            async with running_consumers(consumers):
                log.info(
                    "inference gateway consuming %s and %s (provider %s, %s mode, up to %d attempts)",
                    queue,
                    cancel_queue,
                    settings.lora_provider,
                    settings.modal_mode,
                    settings.gateway_max_attempts,
                )
                yield GatewayRuntime(settings, broker.connection, consumers, metrics)
    finally:
        await http.aclose()
        await storage.close()


def create_app(settings: GatewaySettings) -> FastAPI:
    """The HTTP app; everything is built in its lifespan, nothing at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_gateway(settings) as runtime:
            health.install_readiness(
                app,
                {
                    "broker": health.broker_check(runtime.connection),
                    "consumers": health.consumers_check(runtime.consumers),
                },
            )
            app.state.gateway = runtime
            yield

    app = FastAPI(title="VixenBliss inference gateway", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(health.router)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.inference_gateway [--host H] [--port P]`."""
    return serve(
        argv,
        prog="python -m services.inference_gateway",
        description="VixenBliss inference gateway",
        settings_type=GatewaySettings,
        create_app=create_app,
        default_port=DEFAULT_PORT,
    )
