"""Fixtures of content's integration tests: content (and identity, for the whole chain) in-process, and a
publisher that speaks as identity or the gateway would."""

from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.topology import Topology
from services.common.messaging.broker import Publisher
from tests.support.stack.service_fixtures import content, content_settings, identity, identity_pg_url, identity_settings

__all__ = ["content", "content_settings", "identity", "identity_pg_url", "identity_settings"]


@pytest.fixture
async def publisher(amqp: AbstractRobustConnection, topo: Topology) -> AsyncIterator[Publisher]:
    """Publishes on this run's events exchange as identity or the gateway would."""
    opened = await Publisher.open(amqp, topo.events_exchange)
    yield opened
    await opened.close()
