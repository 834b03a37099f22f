"""Assembly of the gateway: settings → job database, broker, storage, worker clients, service, job runner, outbox
relay, consumers, HTTP app."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import httpx
from aio_pika.abc import AbstractRobustConnection
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.topology import GATEWAY_GENERATION_CANCELED, GATEWAY_GENERATION_REQUESTED, SERVICE_INFERENCE_GATEWAY
from services.common.app import health
from services.common.app.entrypoint import serve
from services.common.app.runtime import open_broker, open_database, running_consumers, running_relay
from services.common.http.edge import install_edge_limits
from services.common.http.errors import install_error_handlers
from services.common.messaging.consumer import Consumer
from services.common.messaging.outbox import OutboxRelay
from services.common.observability import metrics as service_metrics
from services.common.observability import telemetry
from services.common.observability.metrics import ServiceMetrics
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.inference_gateway.consumers import generation_canceled_handler, generation_requested_handler
from services.inference_gateway.jobs import JobEvents, JobStore
from services.inference_gateway.metrics import SERVICE_NAME, Metrics
from services.inference_gateway.migrations import MIGRATIONS
from services.inference_gateway.models import Base, outbox_table
from services.inference_gateway.ports import GatewayPorts, GenerationConfig
from services.inference_gateway.retries import RetryLimits, RetryPolicy
from services.inference_gateway.runner import JobRunner
from services.inference_gateway.service import GenerationService
from services.inference_gateway.settings import GatewaySettings
from services.inference_gateway.worker_client.endpoints import worker_clients

log = logging.getLogger("services.inference_gateway")

DEFAULT_PORT = 8002
# Consumers only record jobs (fast), so they may take many messages at once; the runner sets the GPU pace.
CONSUMER_PREFETCH = 32


@dataclass
class GatewayRuntime:
    """The running parts the routes report on."""

    settings: GatewaySettings
    connection: AbstractRobustConnection
    engine: AsyncEngine
    consumers: tuple[Consumer, ...]
    metrics: Metrics
    jobs: JobStore
    runner: JobRunner


def generation_config(settings: GatewaySettings) -> GenerationConfig:
    """The bounds on one generation, from the GATEWAY_*, MODAL_TIMEOUT_SECONDS, LORA_URL_TTL_SECONDS and budget
    settings."""
    return GenerationConfig(
        limits=RetryLimits(
            RetryPolicy(
                max_attempts=settings.gateway_max_attempts,
                backoff_base_seconds=settings.gateway_backoff_base_seconds,
                backoff_max_seconds=settings.gateway_backoff_max_seconds,
            ),
            upload_retry_seconds=settings.gateway_upload_retry_seconds,
            worker_retry_seconds=settings.gateway_worker_retry_seconds,
        ),
        lora_url_ttl_seconds=settings.lora_url_ttl_seconds,
        worker_timeout_seconds=settings.modal_timeout_seconds,
        budget=settings.generation_budget(),
        secrets=tuple(settings.secret_values()),
    )


def runner_name() -> str:
    """Who holds a job's lease: host, process and a random part (a restarted process is a new runner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[GatewayRuntime]:
    """Open the job database and the broker, start the relay, the runner and the consumers; on exit stop consuming,
    let running jobs finish briefly (the rest are released for the next gateway), and close it all."""
    metrics = Metrics(ServiceMetrics(SERVICE_NAME))
    storage = ObjectStorage(StorageConfig.from_settings(settings))
    # Modal answers a web call longer than 150 s with a 303 to the result: the worker client follows it itself,
    # keeping the credentials to the worker's own origin.
    http = httpx.AsyncClient(follow_redirects=False)
    # Each worker call gets a client span, and the worker continues the trace from its traceparent.
    telemetry.instrument_http_client(http)
    worker, fallback = worker_clients(http, settings)
    try:
        async with (
            open_database(
                settings.database_url, Base.metadata, MIGRATIONS, migrate=settings.migrate_on_start, pool=settings
            ) as database,
            open_broker(
                settings.rabbitmq_url.get_secret_value(),
                settings.topology_prefix,
                service=SERVICE_INFERENCE_GATEWAY,
                declare=settings.rabbitmq_declare,
            ) as broker,
        ):
            relay = OutboxRelay(database.sessions, outbox_table, broker.publisher)
            service_metrics.watch_outbox(metrics.service, relay)
            jobs = JobStore(
                database.sessions,
                owner=runner_name(),
                lease_seconds=settings.gateway_job_lease_seconds,
                on_commit=relay.notify,
            )
            events = JobEvents(jobs)
            service = GenerationService(
                GatewayPorts(worker, storage, events, fallback=fallback, calls=events),
                generation_config(settings),
                metrics,
            )
            runner = JobRunner(
                jobs,
                service,
                concurrency=settings.gateway_concurrency,
                lease_seconds=settings.gateway_job_lease_seconds,
                metrics=metrics,
                retention=timedelta(hours=settings.gateway_job_retention_hours),
            )
            requests = Consumer(
                broker.connection,
                broker.topology.queue(GATEWAY_GENERATION_REQUESTED),
                generation_requested_handler(jobs, runner, metrics),
                prefetch=CONSUMER_PREFETCH,
                metrics=metrics.service,
            )
            cancels = Consumer(
                broker.connection,
                broker.topology.queue(GATEWAY_GENERATION_CANCELED),
                generation_canceled_handler(runner),
                prefetch=CONSUMER_PREFETCH,
                metrics=metrics.service,
            )
            consumers = (cancels, requests)
            # Stopped in reverse: consumers first (nothing new), then the runner (drains), then the relay (sends
            # the last results).
            async with running_relay(relay), runner.running_jobs(), running_consumers(consumers):
                log.info(
                    "inference gateway consuming %s and %s (provider %s, %s mode, %d job(s) at once, up to %d "
                    "attempts)",
                    requests.queue.name,
                    cancels.queue.name,
                    settings.lora_provider,
                    settings.modal_mode,
                    settings.gateway_concurrency,
                    settings.gateway_max_attempts,
                )
                yield GatewayRuntime(settings, broker.connection, database.engine, consumers, metrics, jobs, runner)
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
                    "database": health.database_check(runtime.engine),
                    "broker": health.broker_check(runtime.connection),
                    "consumers": health.consumers_check(runtime.consumers),
                },
            )
            app.state.gateway = runtime
            app.state.metrics = runtime.metrics.service
            try:
                yield
            finally:
                runtime.metrics.service.shutdown()

    app = FastAPI(title="VixenBliss inference gateway", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(service_metrics.router)
    app.include_router(health.router)
    install_edge_limits(app, settings)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.inference_gateway [--host H] [--port P]` (`migrate` is handled by __main__)."""
    return serve(
        argv,
        prog="python -m services.inference_gateway",
        description=(
            "VixenBliss inference gateway (`python -m services.inference_gateway migrate`: upgrade its job "
            "database, exit)"
        ),
        settings_type=GatewaySettings,
        create_app=create_app,
        default_port=DEFAULT_PORT,
        service_name=SERVICE_NAME,
    )
