"""Broker names: defaults, prefixes for test runs, bindings."""

from __future__ import annotations

import pytest

from contracts.events import EventType
from contracts.topology import (
    CONTENT_GENERATION_RESULTS,
    CONTENT_IDENTITY_EVENTS,
    EVENT_PRODUCERS,
    GATEWAY_GENERATION_CANCELED,
    GATEWAY_GENERATION_REQUESTED,
    SERVICE_CONTENT,
    topology,
)


def test_default_names_match_the_design() -> None:
    topo = topology()
    assert topo.events_exchange == "vixen.events"
    assert topo.dead_letter_exchange == "vixen.dlx"
    assert topo.retry_exchange == "vixen.retries"
    assert {q.name for q in topo.queues} == {
        "inference-gateway.generation-requested",
        "inference-gateway.generation-canceled",
        "content.generation-results",
        "content.identity-events",
    }
    assert topo.queue(GATEWAY_GENERATION_REQUESTED).routing_keys == ("generation.requested",)
    assert topo.queue(GATEWAY_GENERATION_REQUESTED).dlq_name == "inference-gateway.generation-requested.dlq"
    assert all(q.delivery_limit == 5 for q in topo.queues)


def test_prefix_applies_to_every_name_but_not_routing_keys() -> None:
    topo = topology(prefix="t-ab12")
    assert topo.events_exchange == "t-ab12.vixen.events"
    assert topo.dead_letter_exchange == "t-ab12.vixen.dlx"
    assert topo.retry_exchange == "t-ab12.vixen.retries"
    spec = topo.queue(CONTENT_IDENTITY_EVENTS)
    assert spec.name == "t-ab12.content.identity-events"
    assert spec.dlq_name == "t-ab12.content.identity-events.dlq"
    assert spec.dead_letter_routing_key == spec.name
    assert "avatar.created" in spec.routing_keys
    assert topology(prefix="t-ab12") == topo  # frozen and comparable


def test_every_event_is_consumed_by_some_queue_and_has_a_producer() -> None:
    # With a requesting service: without one there is no queue of commands or answers at all.
    taken = {t for q in topology(requesters=("scheduler",)).queues for t in (q.event_types or q.routing_keys)}
    assert taken == {t.value for t in EventType}
    assert {key for q in topology().queues for key in q.routing_keys} == {t.value for t in EventType} - {
        "generation.submit",
        "generation.accepted",
        "generation.rejected",
        "generation.finished",
    }
    assert set(EVENT_PRODUCERS) == set(EventType)
    results = topology().queue(CONTENT_GENERATION_RESULTS).routing_keys
    assert set(results) == {"generation.started", "generation.completed", "generation.failed"}


def test_generation_canceled_comes_from_content_to_its_own_gateway_queue_only() -> None:
    assert EVENT_PRODUCERS[EventType.GENERATION_CANCELED] == SERVICE_CONTENT
    spec = topology(prefix="t-ab12").queue(GATEWAY_GENERATION_CANCELED)
    assert spec.base_name == "inference-gateway.generation-canceled"
    assert spec.name == "t-ab12.inference-gateway.generation-canceled"
    assert spec.routing_keys == ("generation.canceled",)
    assert spec.dlq_name == "t-ab12.inference-gateway.generation-canceled.dlq"
    # Bound to that queue alone: the requests queue never sees a cancel, and no other queue does either.
    bound_to = [q.base_name for q in topology().queues if "generation.canceled" in q.routing_keys]
    assert bound_to == [GATEWAY_GENERATION_CANCELED]


def test_unknown_queue_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        topology().queue("nobody.listens")
