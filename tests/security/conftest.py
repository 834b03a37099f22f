"""The security suite: every attack of issue 20 against the real services (RabbitMQ, PostgreSQL, S3, the apps on
real sockets), each test seen failing against the code before its defence existed."""

from __future__ import annotations

from tests.integration import conftest as integration
from tests.support.stack.service_fixtures import content, content_settings, identity, identity_pg_url, identity_settings

# The integration suite's service fixtures (found by name): real RabbitMQ, PostgreSQL and S3, names unique per test.
_containers = integration._containers
_docker = integration._docker
rabbitmq_url = integration.rabbitmq_url
pg_admin_url = integration.pg_admin_url
run_prefix = integration.run_prefix
amqp = integration.amqp
topo = integration.topo
pg_url = integration.pg_url
s3_service = integration.s3_service
s3_endpoint = integration.s3_endpoint
storage = integration.storage

__all__ = ["content", "content_settings", "identity", "identity_pg_url", "identity_settings"]
