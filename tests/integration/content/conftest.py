"""Fixtures of content's integration tests: content (and identity, for the whole chain) in-process."""

from tests.support.service_fixtures import content, content_settings, identity, identity_pg_url, identity_settings

__all__ = ["content", "content_settings", "identity", "identity_pg_url", "identity_settings"]
