"""Fixtures of identity's integration tests: the service in-process over real RabbitMQ, PostgreSQL and S3."""

from tests.support.stack.service_fixtures import identity, identity_pg_url, identity_settings

__all__ = ["identity", "identity_pg_url", "identity_settings"]
