"""Fixtures for integration tests: real RabbitMQ, PostgreSQL and an S3 endpoint, names unique per run.

Service URLs come from TEST_RABBITMQ_URL / TEST_DATABASE_URL. With none given and a Docker engine answering
(testcontainers is in the test extra), containers of compose's images are started, SeaweedFS among them
(tests/support/containers.py); otherwise the local services on 127.0.0.1 are used, and SeaweedFS as the S3 server.
A service that does not answer fails the test with a clear message (TEST_SKIP_UNAVAILABLE=1 skips instead).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.topology import Topology, topology
from services.common.messaging.broker import connect
from services.common.persistence.db import create_engine, create_test_database, drop_test_database
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.tools.s3_local import LOCAL_REGION, LocalS3Server
from tests.support import containers
from tests.support.queues import declared_topology

LOCAL_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _require(url: str, default_port: int, what: str) -> None:
    if _answers(url, default_port):
        return
    message = f"{what} does not answer at {urlsplit(url).netloc.rsplit('@', 1)[-1]} (run scripts/ensure-services.sh)"
    if os.environ.get("TEST_SKIP_UNAVAILABLE") == "1":
        pytest.skip(message)
    pytest.fail(message)


@pytest.fixture(scope="session")
def _containers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def _docker() -> bool:
    """Whether a Docker engine answers (then the services run in containers)."""
    return containers.docker_answers()


@pytest.fixture(scope="session")
def rabbitmq_url(_containers: ExitStack, _docker: bool) -> str:
    url = os.environ.get("TEST_RABBITMQ_URL")
    if not url and _docker:
        url = containers.rabbitmq(_containers)
    url = url or LOCAL_RABBITMQ_URL
    _require(url, 5672, "RabbitMQ")
    return url


@pytest.fixture(scope="session")
def pg_admin_url(_containers: ExitStack, _docker: bool) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url and _docker:
        url = containers.postgres(_containers)
    url = url or LOCAL_DATABASE_URL
    _require(url, 5432, "PostgreSQL")
    return url


@pytest.fixture
def run_prefix() -> str:
    """A prefix unique to this test, for queue, exchange and bucket names."""
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture
async def amqp(rabbitmq_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(rabbitmq_url, name="vixenbliss-tests")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def topo(amqp: AbstractRobustConnection, run_prefix: str) -> AsyncIterator[Topology]:
    """The platform topology under a unique prefix, declared, and deleted afterwards."""
    names = topology(prefix=run_prefix)
    async with declared_topology(amqp, names):
        yield names


@pytest.fixture
async def pg_url(pg_admin_url: str) -> AsyncIterator[URL]:
    """A fresh PostgreSQL database `vb_test_<random>`, dropped afterwards."""
    url = await create_test_database(pg_admin_url)
    try:
        yield url
    finally:
        await drop_test_database(pg_admin_url, url)


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database: a fresh PostgreSQL one, or a SQLite file (each test runs on both)."""
    if request.param == "sqlite":
        created = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
        try:
            yield created
        finally:
            await created.dispose()
        return
    # Asked for here, not as an argument, so that the SQLite runs need no PostgreSQL.
    admin_url: str = request.getfixturevalue("pg_admin_url")
    url = await create_test_database(admin_url)
    created = create_engine(url)
    try:
        yield created
    finally:
        await created.dispose()
        await drop_test_database(admin_url, url)


@pytest.fixture(scope="session")
def s3_service(_containers: ExitStack, _docker: bool) -> Iterator[containers.S3Service]:
    """SeaweedFS with a fresh key for the session: in a container of compose's image when Docker answers, else local."""
    if _docker:
        yield containers.seaweedfs(_containers)
        return
    server = LocalS3Server("127.0.0.1", 0).start()
    try:
        credentials = server.credentials
        yield containers.S3Service(server.endpoint_url, credentials.access_key_id, credentials.secret_access_key)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_service: containers.S3Service) -> str:
    """The S3 endpoint's URL."""
    return s3_service.url


@pytest.fixture
async def storage(s3_service: containers.S3Service, run_prefix: str) -> AsyncIterator[ObjectStorage]:
    """A bucket unique to this test on the session's S3 endpoint."""
    store = ObjectStorage(
        StorageConfig(
            endpoint_url=s3_service.url,
            access_key_id=s3_service.access_key_id,
            secret_access_key=s3_service.secret_access_key,
            bucket=f"vb-{run_prefix}",
            region=LOCAL_REGION,
        )
    )
    await store.ensure_bucket()
    try:
        yield store
    finally:
        await store.close()
