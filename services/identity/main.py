"""Identity assembly: `create_app(settings)` wires everything inside the lifespan; `main()` runs it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from contracts.topology import SERVICE_IDENTITY
from services.common.app import health
from services.common.app.entrypoint import serve
from services.common.app.openapi import DOCUMENT_META
from services.common.app.runtime import open_broker, open_database, running_relay
from services.common.auth import TokenVerifier, install_verifier
from services.common.http.edge import install_edge_limits
from services.common.http.errors import install_error_handlers
from services.common.messaging.outbox import OutboxRelay
from services.common.observability import metrics as service_metrics
from services.common.persistence.db import database_unreachable
from services.common.persistence.retention import Bookkeeping, RetentionTask, running_retention
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.identity.api import admin_router, router
from services.identity.avatars import AvatarService
from services.identity.lora_files import LoraFiles
from services.identity.loras import LoraLimits, LoraService
from services.identity.migrations import MIGRATIONS
from services.identity.models import Base, outbox_table
from services.identity.settings import DEFAULT_PORT, IdentitySettings
from services.identity.upload_expiry import UploadSweeper

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


SERVICE_NAME = "vixenbliss-identity"


def create_app(settings: IdentitySettings) -> FastAPI:
    """The identity app; its database, broker, storage and relay start with the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = ObjectStorage(StorageConfig.from_settings(settings))
        try:
            async with (
                service_metrics.app_metrics(app, SERVICE_NAME) as metrics,
                open_database(
                    settings.database_url, Base.metadata, MIGRATIONS, migrate=settings.migrate_on_start, pool=settings
                ) as database,
                open_broker(
                    settings.rabbitmq_url.get_secret_value(),
                    settings.topology_prefix,
                    service=SERVICE_IDENTITY,
                    declare=settings.rabbitmq_declare,
                ) as broker,
            ):
                relay = OutboxRelay(database.sessions, outbox_table, broker.publisher)
                service_metrics.watch_outbox(metrics, relay)
                expiry = RetentionTask("LoRA registration expiry", UploadSweeper(database.sessions, storage).run)
                async with (
                    running_relay(relay),
                    running_retention(database.sessions, Bookkeeping(outbox=outbox_table), settings, tasks=[expiry]),
                ):
                    health.install_readiness(
                        app,
                        {
                            "database": health.database_check(database.engine),
                            "broker": health.broker_check(broker.connection),
                        },
                    )
                    app.state.avatar_service = AvatarService(
                        database.sessions, quotas=settings.owner_quotas(), on_commit=relay.notify
                    )
                    app.state.lora_service = LoraService(
                        database.sessions,
                        LoraFiles(storage, max_bytes=settings.lora_max_bytes),
                        LoraLimits.from_settings(settings),
                        on_commit=relay.notify,
                    )
                    yield
        finally:
            await storage.close()

    app = build_app(lifespan)
    install_verifier(app, TokenVerifier.from_settings(settings))
    install_edge_limits(app, settings)
    return app


def build_app(lifespan: Lifespan | None = None) -> FastAPI:
    """The routes and error handling without anything started: the app serves them once a lifespan ran, and
    the OpenAPI document is made from them alone."""
    app = FastAPI(
        title="VixenBliss identity",
        version="0.1.0",
        description="Avatars and their LoRA versions. Every route takes a bearer JWT whose `sub` is the owner.",
        lifespan=lifespan,
        **DOCUMENT_META,
    )
    install_error_handlers(app, unavailable=database_unreachable)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(health.router)
    app.include_router(service_metrics.router)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.identity [--host H] [--port P]`."""
    return serve(
        argv,
        prog="python -m services.identity",
        description="VixenBliss identity service",
        settings_type=IdentitySettings,
        create_app=create_app,
        default_port=DEFAULT_PORT,
        service_name=SERVICE_NAME,
    )
