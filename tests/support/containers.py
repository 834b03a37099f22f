"""RabbitMQ, PostgreSQL and MinIO in containers (testcontainers), for a developer with a Docker engine and no service
URLs: the images are the ones deploy/compose.yaml runs, so the tests meet what a deployment meets."""

from __future__ import annotations

import importlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
MINIO_USER, MINIO_PASSWORD = "vixenbliss-tests", "vixenbliss-tests-secret"


@dataclass(frozen=True)
class S3Service:
    """An S3 endpoint and keys it accepts."""

    url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


@cache
def compose_image(service: str) -> str:
    """The image deploy/compose.yaml runs for `service`."""
    return str(yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"][service]["image"])


def docker_answers() -> bool:
    """Whether testcontainers is installed and a Docker engine answers (quickly)."""
    try:
        # Imported by name: an optional path, so type checks need no stubs.
        docker: Any = importlib.import_module("docker")
        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _module(name: str) -> Any:
    """A testcontainers module: `testcontainers.community.<name>` since 4.13, `testcontainers.<name>` before."""
    try:
        return importlib.import_module(f"testcontainers.community.{name}")
    except ImportError:
        return importlib.import_module(f"testcontainers.{name}")


def rabbitmq(stack: ExitStack) -> str:
    """A RabbitMQ container for the session; its AMQP URL."""
    module = _module("rabbitmq")
    container: Any = stack.enter_context(module.RabbitMqContainer(compose_image("rabbitmq")))
    return f"amqp://guest:guest@{container.get_container_host_ip()}:{container.get_exposed_port(5672)}/"


def postgres(stack: ExitStack) -> str:
    """A PostgreSQL container for the session; its admin URL (asyncpg)."""
    module = _module("postgres")
    container: Any = stack.enter_context(module.PostgresContainer(compose_image("postgres")))
    return str(container.get_connection_url(driver="asyncpg"))


def minio(stack: ExitStack) -> S3Service:
    """A MinIO container for the session; its endpoint and root keys."""
    module = _module("minio")
    container: Any = stack.enter_context(
        module.MinioContainer(compose_image("minio"), access_key=MINIO_USER, secret_key=MINIO_PASSWORD)
    )
    url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(9000)}"
    return S3Service(url, MINIO_USER, MINIO_PASSWORD)
