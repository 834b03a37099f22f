"""The path for a developer with Docker: RabbitMQ, PostgreSQL and SeaweedFS containers of the images compose runs,
each answering as the services need. Here, with no Docker engine, these tests say so and do not run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import text

from services.common.messaging.broker import connect
from services.common.persistence.db import create_engine
from services.common.storage.objects import ObjectStorage, StorageConfig
from tests.support import containers

needs_docker = pytest.mark.skipif(
    not containers.docker_answers(), reason="no Docker engine answers: the tests use the local services instead"
)


@pytest.fixture(scope="module")
def stack() -> Iterator[ExitStack]:
    with ExitStack() as started:
        yield started


@needs_docker
async def test_rabbitmq_of_composes_image_takes_a_connection(stack: ExitStack) -> None:
    connection = await connect(containers.rabbitmq(stack), name="container-check")
    await connection.close()


@needs_docker
async def test_postgresql_of_composes_image_answers(stack: ExitStack) -> None:
    engine = create_engine(containers.postgres(stack))
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


@needs_docker
async def test_seaweedfs_of_composes_image_stores_an_object(stack: ExitStack) -> None:
    service = containers.seaweedfs(stack)
    store = ObjectStorage(
        StorageConfig(service.url, service.access_key_id, service.secret_access_key, "vb-container-check", "auto")
    )
    try:
        await store.ensure_bucket()
        await store.put_bytes("k", b"v")
        assert await store.get_bytes("k") == b"v"
    finally:
        await store.close()


def test_the_images_are_composes() -> None:
    assert containers.compose_image("rabbitmq").startswith("rabbitmq:")
    assert containers.compose_image("postgres").startswith("postgres:")
    assert containers.compose_image("seaweedfs").startswith("chrislusf/seaweedfs:")
