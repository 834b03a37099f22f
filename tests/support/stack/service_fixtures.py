"""Fixtures that run identity and content in-process (lifespan included) against the integration services.

Imported by the conftest of each service's integration tests, so that a test of one service can run the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from contracts.topology import Topology
from services.common.persistence.db import create_test_database, drop_test_database
from services.common.storage.objects import ObjectStorage
from services.content.main import create_app as create_content_app
from services.content.settings import ContentSettings
from services.identity.main import create_app as create_identity_app
from services.identity.settings import IdentitySettings
from tests.support.auth import TEST_JWT_SECRET

# Small enough that a test can upload something over it.
TEST_LORA_MAX_BYTES = 256 * 1024


def service_env(rabbitmq_url: str, storage: ObjectStorage, topo: Topology) -> dict[str, Any]:
    """Settings (by environment name) shared by both services in a test."""
    config = storage.config
    return {
        "RABBITMQ_URL": rabbitmq_url,
        "VIXEN_TOPOLOGY_PREFIX": topo.prefix,
        "R2_ENDPOINT_URL": config.endpoint_url,
        "R2_ACCESS_KEY_ID": config.access_key_id,
        "R2_SECRET_ACCESS_KEY": config.secret_access_key,
        "R2_BUCKET_NAME": config.bucket,
        "R2_REGION": config.region,
        "R2_PUBLIC_URL": None,
        "AUTH_JWT_SECRET": TEST_JWT_SECRET,
    }


def database_url(url: URL) -> str:
    """The URL as a string a settings class reads (with its password, unlike str(url))."""
    return url.render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def serving(app: FastAPI, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client that calls it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
async def identity_pg_url(pg_admin_url: str) -> AsyncIterator[URL]:
    """A database of identity's own, apart from the one `pg_url` gives content."""
    url = await create_test_database(pg_admin_url, prefix="vb_test_identity_")
    try:
        yield url
    finally:
        await drop_test_database(pg_admin_url, url)


@pytest.fixture
def identity_settings(
    rabbitmq_url: str, identity_pg_url: URL, storage: ObjectStorage, topo: Topology
) -> IdentitySettings:
    return IdentitySettings(
        **service_env(rabbitmq_url, storage, topo),
        IDENTITY_DATABASE_URL=database_url(identity_pg_url),
        LORA_MAX_BYTES=TEST_LORA_MAX_BYTES,
        # Full SDXL for header-only files, the tiny model for files the worker can really load.
        LORA_BASE_MODELS="sdxl-base-1.0,tiny-sdxl-random",
    )


@pytest.fixture
async def identity(identity_settings: IdentitySettings) -> AsyncIterator[httpx.AsyncClient]:
    """The identity service, started, as an HTTP client."""
    async with serving(create_identity_app(identity_settings), "http://identity") as client:
        yield client


@pytest.fixture
def content_settings(rabbitmq_url: str, pg_url: URL, storage: ObjectStorage, topo: Topology) -> ContentSettings:
    return ContentSettings(**service_env(rabbitmq_url, storage, topo), CONTENT_DATABASE_URL=database_url(pg_url))


@pytest.fixture
async def content(content_settings: ContentSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The content service, started (consumers included), as an HTTP client."""
    async with serving(create_content_app(content_settings), "http://content") as client:
        yield client
