"""Identity assembly: `create_app(settings)` wires everything inside the lifespan; `main()` runs it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI

from contracts.topology import SERVICE_IDENTITY
from services.common.entrypoint import serve
from services.common.http_errors import install_error_handlers
from services.common.outbox import OutboxRelay
from services.common.runtime import open_broker, open_database, running_relay
from services.common.storage import ObjectStorage, StorageConfig
from services.identity.api import health_router, router
from services.identity.models import Base, outbox_table
from services.identity.service import IdentityService, LoraLimits
from services.identity.settings import DEFAULT_PORT, IdentitySettings


def create_app(settings: IdentitySettings) -> FastAPI:
    """The identity app; its database, broker, storage and relay start with the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = ObjectStorage(StorageConfig.from_settings(settings))
        try:
            async with (
                open_database(settings.database_url, Base.metadata) as database,
                open_broker(
                    settings.rabbitmq_url.get_secret_value(), settings.topology_prefix, service=SERVICE_IDENTITY
                ) as broker,
            ):
                relay = OutboxRelay(database.sessions, outbox_table, broker.publisher)
                async with running_relay(relay):
                    app.state.identity_service = IdentityService(
                        database.sessions,
                        storage,
                        LoraLimits(settings.lora_max_bytes, settings.lora_upload_url_ttl_seconds),
                        on_commit=relay.notify,
                    )
                    yield
        finally:
            await storage.close()

    app = FastAPI(title="VixenBliss identity", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(health_router)
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
    )
