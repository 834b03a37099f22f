"""Content assembly: `create_app(settings)` wires everything inside the lifespan; `main()` runs it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI

from contracts.topology import CONTENT_GENERATION_RESULTS, CONTENT_IDENTITY_EVENTS, SERVICE_CONTENT
from services.common.broker import Consumer
from services.common.entrypoint import serve
from services.common.http_errors import install_error_handlers
from services.common.outbox import OutboxRelay
from services.common.runtime import open_broker, open_database, running_consumers, running_relay
from services.common.storage import ObjectStorage, StorageConfig
from services.content.api import health_router, router
from services.content.consumers import generation_results_handler, identity_events_handler
from services.content.migrations import MIGRATIONS
from services.content.models import Base, outbox_table
from services.content.service import ContentPolicy, ContentService
from services.content.settings import DEFAULT_PORT, ContentSettings
from services.content.sweeper import running_sweeper


def create_app(settings: ContentSettings) -> FastAPI:
    """The content app; its database, broker, storage, relay and consumers start with the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = ObjectStorage(StorageConfig.from_settings(settings))
        try:
            async with (
                open_database(
                    settings.database_url, Base.metadata, MIGRATIONS, migrate=settings.migrate_on_start
                ) as database,
                open_broker(
                    settings.rabbitmq_url.get_secret_value(), settings.topology_prefix, service=SERVICE_CONTENT
                ) as broker,
            ):
                relay = OutboxRelay(database.sessions, outbox_table, broker.publisher)
                service = ContentService(
                    database.sessions,
                    storage,
                    ContentPolicy(settings.generation_deadline_seconds, settings.content_image_url_ttl_seconds),
                    on_commit=relay.notify,
                )
                consumers = [
                    # One at a time: the projection applies identity's events in the order they come.
                    Consumer(
                        broker.connection,
                        broker.topology.queue(CONTENT_IDENTITY_EVENTS).name,
                        identity_events_handler(service),
                        prefetch=1,
                    ),
                    Consumer(
                        broker.connection,
                        broker.topology.queue(CONTENT_GENERATION_RESULTS).name,
                        generation_results_handler(service),
                        prefetch=settings.results_prefetch,
                    ),
                ]
                async with (
                    running_relay(relay),
                    running_consumers(consumers),
                    running_sweeper(service, settings.sweep_interval_seconds, settings.sweep_grace_seconds),
                ):
                    app.state.content_service = service
                    yield
        finally:
            await storage.close()

    app = FastAPI(title="VixenBliss content", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(health_router)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.content [--host H] [--port P]` (`migrate` is handled by __main__)."""
    return serve(
        argv,
        prog="python -m services.content",
        description="VixenBliss content service (`python -m services.content migrate`: upgrade its database, exit)",
        settings_type=ContentSettings,
        create_app=create_app,
        default_port=DEFAULT_PORT,
    )
