"""Content assembly: `create_app(settings)` wires everything inside the lifespan; `main()` runs it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from contracts.topology import (
    CONTENT_GENERATION_RESULTS,
    CONTENT_GENERATION_SUBMITS,
    CONTENT_IDENTITY_EVENTS,
    SERVICE_CONTENT,
)
from services.common.app import health
from services.common.app.entrypoint import serve
from services.common.app.openapi import DOCUMENT_META
from services.common.app.runtime import open_broker, open_database, running_consumers, running_relay
from services.common.auth import TokenVerifier, install_verifier
from services.common.http.edge import install_edge_limits
from services.common.http.errors import install_error_handlers
from services.common.messaging.consumer import Consumer
from services.common.messaging.outbox import OutboxRelay
from services.common.observability import metrics as service_metrics
from services.common.persistence.db import database_unreachable
from services.common.persistence.retention import Bookkeeping, running_retention
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.content import playground
from services.content.admission import AdmissionLimits
from services.content.api import ContentApi, router
from services.content.cancel import OwnerCancel
from services.content.changes import ChangeFeed, ChangeHub
from services.content.command_trust import CommandTrust
from services.content.commands import SubmitCommands
from services.content.consumers import (
    generation_results_handler,
    generation_submits_handler,
    identity_events_handler,
)
from services.content.cors import install_cors
from services.content.migrations import MIGRATIONS
from services.content.models import Base, inbox_table, outbox_table
from services.content.projection import IdentityProjection
from services.content.reads import GenerationReads
from services.content.results import ResultApplier
from services.content.settings import DEFAULT_PORT, AdmissionSettings, ContentSettings, SubmitCommandSettings
from services.content.signed_links import LinkSigner
from services.content.streams import watching_from_settings
from services.content.submit import Submissions
from services.content.sweeper import SweeperChores, running_sweeper

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
# NOTIFY channel of generation changes (per database: each service has its own).
CHANGES_CHANNEL = "content_generation_changes"
SERVICE_NAME = "vixenbliss-content"


def admission_limits(settings: AdmissionSettings) -> AdmissionLimits:
    """The admission rules from the settings."""
    return AdmissionLimits(
        min_side=settings.min_side,
        max_side=settings.max_side,
        max_steps=settings.max_steps,
        max_pixel_steps=settings.max_pixel_steps,
        max_in_flight=settings.max_in_flight_per_owner,
        rate_per_minute=settings.submit_rate_per_minute,
        burst=settings.submit_burst,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
    )


def command_trust(services: tuple[str, ...], settings: SubmitCommandSettings) -> CommandTrust:
    """Who may send generation.submit, from the settings."""
    return CommandTrust(
        frozenset(services),
        user_prefix=settings.submit_broker_user_prefix,
        require_user_id=settings.submit_require_user_id,
    )


def create_app(settings: ContentSettings) -> FastAPI:
    """The content app; its database, broker, storage, relay, consumers, change listener and sweeper start with
    the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = ObjectStorage(StorageConfig.from_settings(settings))
        hub = ChangeHub()
        changes = ChangeFeed(hub, CHANGES_CHANNEL)
        try:
            async with (
                service_metrics.app_metrics(app, SERVICE_NAME) as metrics,
                open_database(
                    settings.database_url, Base.metadata, MIGRATIONS, migrate=settings.migrate_on_start, pool=settings
                ) as database,
                changes.running(database.engine),
                open_broker(
                    settings.rabbitmq_url.get_secret_value(),
                    settings.topology_prefix,
                    service=SERVICE_CONTENT,
                    declare=settings.rabbitmq_declare,
                    requesters=settings.submit_services,
                ) as broker,
            ):
                relay = OutboxRelay(database.sessions, outbox_table, broker.publisher)
                service_metrics.watch_outbox(metrics, relay)
                limits = admission_limits(settings)
                reads = GenerationReads(database.sessions, storage, settings.content_image_url_ttl_seconds)
                submissions = Submissions(
                    database.sessions,
                    reads,
                    limits,
                    changes,
                    deadline_seconds=settings.generation_deadline_seconds,
                    on_commit=relay.notify,
                    metrics=metrics,
                )
                owner_cancel = OwnerCancel(database.sessions, reads, changes, on_commit=relay.notify, metrics=metrics)
                chores = SweeperChores(
                    database.sessions,
                    storage,
                    changes,
                    idempotency_ttl_seconds=limits.idempotency_ttl_seconds,
                    metrics=metrics,
                )
                results = ResultApplier(database.sessions, changes, chores, on_commit=relay.notify, metrics=metrics)
                projection = IdentityProjection(database.sessions)
                consumers = [
                    # One at a time: the projection applies identity's events in the order they come.
                    Consumer(
                        broker.connection,
                        broker.topology.queue(CONTENT_IDENTITY_EVENTS),
                        identity_events_handler(projection),
                        prefetch=1,
                        metrics=metrics,
                    ),
                    Consumer(
                        broker.connection,
                        broker.topology.queue(CONTENT_GENERATION_RESULTS),
                        generation_results_handler(results),
                        prefetch=settings.results_prefetch,
                        metrics=metrics,
                    ),
                ]
                if settings.submit_services:
                    trust = command_trust(settings.submit_services, settings)
                    commands = SubmitCommands(database.sessions, submissions, on_commit=relay.notify, metrics=metrics)
                    consumers.append(
                        Consumer(
                            broker.connection,
                            broker.topology.queue(CONTENT_GENERATION_SUBMITS),
                            generation_submits_handler(commands, trust),
                            prefetch=settings.submit_prefetch,
                            metrics=metrics,
                            source_check=trust,
                        )
                    )
                async with (
                    running_relay(relay),
                    running_retention(database.sessions, Bookkeeping(outbox_table, inbox_table), settings),
                    running_consumers(consumers),
                    running_sweeper(chores, settings.sweep_interval_seconds, settings.sweep_grace_seconds),
                ):
                    health.install_readiness(
                        app,
                        {
                            "database": health.database_check(database.engine),
                            "broker": health.broker_check(broker.connection),
                            "consumers": health.consumers_check(consumers),
                        },
                    )
                    app.state.content = ContentApi(
                        submissions=submissions,
                        reads=reads,
                        owner_cancel=owner_cancel,
                        projection=projection,
                        hub=hub,
                        watching=watching_from_settings(settings, hub, reads.get_unchecked, metrics),
                        links=LinkSigner.derived(settings.link_secret(), "content-stream-links"),
                        limits=limits,
                        max_wait_seconds=settings.max_wait_seconds,
                        stream_link_ttl_seconds=settings.stream_link_ttl_seconds,
                    )
                    yield
        finally:
            await storage.close()

    app = build_app(lifespan)
    install_verifier(app, TokenVerifier.from_settings(settings))
    install_cors(app, settings.cors_origins)
    install_edge_limits(app, settings)
    return app


def build_app(lifespan: Lifespan | None = None) -> FastAPI:
    """The routes and error handling without anything started: the app serves them once a lifespan ran, and
    the OpenAPI document is made from them alone."""
    app = FastAPI(
        title="VixenBliss content",
        version="0.2.0",
        description=(
            "Generations of the caller's avatars: submit, wait, stream progress, cancel, list. Every route takes a "
            "bearer JWT whose `sub` is the owner; someone else's avatar or generation answers 404."
        ),
        lifespan=lifespan,
        **DOCUMENT_META,
    )
    install_error_handlers(app, unavailable=database_unreachable)
    app.include_router(router)
    app.include_router(playground.router)
    app.include_router(health.router)
    app.include_router(service_metrics.router)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.content [--host H] [--port P]` (`migrate` and `openapi` are handled by __main__)."""
    return serve(
        argv,
        prog="python -m services.content",
        description="VixenBliss content service (`python -m services.content migrate`: upgrade its database, exit)",
        settings_type=ContentSettings,
        create_app=create_app,
        default_port=DEFAULT_PORT,
        service_name=SERVICE_NAME,
    )
