"""Broker fixtures of the common tests: a topology whose retry stages take fractions of a second."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.topology import Topology, topology
from tests.support.queues import declared_topology

# Growing, and short enough for a test: 1.4 s from the first failure to the DLQ.
FAST_RETRY_DELAYS = (0.2, 0.4, 0.8)


@pytest.fixture
async def fast_topo(amqp: AbstractRobustConnection, run_prefix: str) -> AsyncIterator[Topology]:
    """The platform topology under a unique prefix with FAST_RETRY_DELAYS, declared, and deleted afterwards."""
    names = topology(prefix=run_prefix, retry_delays=FAST_RETRY_DELAYS)
    async with declared_topology(amqp, names):
        yield names
