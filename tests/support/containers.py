"""RabbitMQ, PostgreSQL and SeaweedFS's S3 in containers (testcontainers), for a developer with a Docker engine and no
service URLs: the images (and SeaweedFS's command line) are the ones deploy/compose.yaml runs, so the tests meet what
a deployment meets."""

from __future__ import annotations

import importlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from services.tools.s3_local import READY_TIMEOUT_SECONDS, LocalS3Error, S3Credentials, wait_until_serving

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
S3_SERVICE = "seaweedfs"
S3_PORT = 9000


@dataclass(frozen=True)
class S3Service:
    """An S3 endpoint and keys it accepts."""

    url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


@cache
def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    return services


def compose_image(service: str) -> str:
    """The image deploy/compose.yaml runs for `service`."""
    return str(_compose_services()[service]["image"])


def compose_command(service: str) -> list[str]:
    """The command deploy/compose.yaml gives `service` (the arguments after the image's entrypoint)."""
    return [str(argument) for argument in _compose_services()[service]["command"]]


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


def seaweedfs(stack: ExitStack) -> S3Service:
    """A SeaweedFS container for the session, with compose's command and a fresh key; its endpoint and that key.

    testcontainers has no SeaweedFS module: a plain container, ready once a signed request succeeds (weed's S3 port
    opens before its filer answers), as the local server is waited for."""
    core: Any = importlib.import_module("testcontainers.core.container")
    credentials = S3Credentials.generate()
    container: Any = (
        core.DockerContainer(compose_image(S3_SERVICE))
        .with_command(compose_command(S3_SERVICE))
        .with_env("AWS_ACCESS_KEY_ID", credentials.access_key_id)
        .with_env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key)
        .with_exposed_ports(S3_PORT)
    )
    stack.enter_context(container)
    url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(S3_PORT)}"
    try:
        wait_until_serving(url, credentials, timeout=READY_TIMEOUT_SECONDS)
    except LocalS3Error as error:
        logs = container.get_wrapped_container().logs(tail=20).decode(errors="replace")
        raise LocalS3Error(f"{error}\n{logs}") from None
    return S3Service(url, credentials.access_key_id, credentials.secret_access_key)
