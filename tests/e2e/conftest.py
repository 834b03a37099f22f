"""The whole local stack, started by the launcher's library on free ports, unique databases and names."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from scripts.stacklib.config import LOCAL_REGION, StackConfig
from scripts.stacklib.runner import LocalStack
from services.common.persistence.db import create_test_database, drop_test_database
from services.common.storage.objects import ObjectStorage, StorageConfig
from tests.integration import conftest as integration
from tests.support.queues import delete_run_topology

# The integration suite's service fixtures (found by name): real RabbitMQ, PostgreSQL and S3.
_containers = integration._containers
_docker = integration._docker
amqp = integration.amqp
pg_admin_url = integration.pg_admin_url
rabbitmq_url = integration.rabbitmq_url


@contextmanager
def running_stack(
    rabbitmq_url: str,
    pg_admin_url: str,
    model_dir: Path,
    run_dir: Path,
    extra_env: Mapping[str, str],
    adjust: Callable[[StackConfig], StackConfig] | None = None,
) -> Iterator[LocalStack]:
    """S3, worker, identity, content and gateway as processes on fresh PostgreSQL databases and topology names,
    with `extra_env` for every service; all removed after. `adjust` changes the config once its ports are chosen
    (a service pointed through a proxy in front of another)."""
    prefix = f"e2e-{secrets.token_hex(4)}"
    databases = [asyncio.run(create_test_database(pg_admin_url, prefix="vb_e2e_")) for _ in range(2)]
    config = StackConfig(
        run_dir=run_dir,
        rabbitmq_url=rabbitmq_url,
        topology_prefix=prefix,
        identity_database_url=databases[0].render_as_string(hide_password=False),
        content_database_url=databases[1].render_as_string(hide_password=False),
        bucket=f"vb-{prefix}",
        model_dir=model_dir,
        extra_env=dict(extra_env),
    ).with_free_ports()
    local = LocalStack(adjust(config) if adjust else config)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        asyncio.run(delete_run_topology(rabbitmq_url, prefix))
        for url in databases:
            asyncio.run(drop_test_database(pg_admin_url, url))


@pytest.fixture(scope="module")
def stack(
    rabbitmq_url: str, pg_admin_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The stack with short gateway backoffs (a failure must reach content quickly)."""
    short_backoffs = {"GATEWAY_BACKOFF_BASE_SECONDS": "0.05", "GATEWAY_BACKOFF_MAX_SECONDS": "0.2"}
    with running_stack(
        rabbitmq_url, pg_admin_url, tiny_model_dir, tmp_path_factory.mktemp("stack"), short_backoffs
    ) as local:
        yield local


@pytest.fixture
async def stack_storage(stack: LocalStack) -> AsyncIterator[ObjectStorage]:
    """The stack's bucket, read directly (what the services stored)."""
    credentials = stack.config.s3_credentials()
    store = ObjectStorage(
        StorageConfig(
            endpoint_url=stack.config.url("s3"),
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            bucket=stack.config.bucket,
            region=LOCAL_REGION,
        )
    )
    try:
        yield store
    finally:
        await store.close()
