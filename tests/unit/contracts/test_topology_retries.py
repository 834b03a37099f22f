"""Retry stages and the per-queue acceptance rules in the topology."""

from __future__ import annotations

import pytest

from contracts.events import EventType
from contracts.topology import (
    CONTENT_GENERATION_RESULTS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY_DELAYS,
    EVENT_PRODUCERS,
    GATEWAY_GENERATION_REQUESTED,
    SERVICE_REQUESTER,
    event_source,
    producer_source,
    retry_stage_name,
    topology,
)


def test_default_stages_outlast_a_60_second_outage() -> None:
    assert DEFAULT_RETRY_DELAYS == (1.0, 5.0, 15.0, 60.0, 120.0)
    # The last try comes this long after the first failure; an outage shorter than that loses nothing.
    assert sum(DEFAULT_RETRY_DELAYS[:-1]) > 60
    assert list(DEFAULT_RETRY_DELAYS) == sorted(DEFAULT_RETRY_DELAYS)
    spec = topology().queue(GATEWAY_GENERATION_REQUESTED)
    assert [s.name for s in spec.retry_stages] == [
        "inference-gateway.generation-requested.retry-1s",
        "inference-gateway.generation-requested.retry-5s",
        "inference-gateway.generation-requested.retry-15s",
        "inference-gateway.generation-requested.retry-60s",
        "inference-gateway.generation-requested.retry-120s",
    ]
    assert [s.ttl_ms for s in spec.retry_stages] == [1000, 5000, 15000, 60000, 120000]
    assert spec.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 256 * 1024


def test_stages_are_prefixed_named_by_their_delay_and_shared_when_equal() -> None:
    topo = topology(prefix="t-ab12", retry_delays=(0.2, 0.2, 1.5))
    spec = topo.queue(CONTENT_GENERATION_RESULTS)
    assert [s.name for s in spec.retry_stages] == [
        "t-ab12.content.generation-results.retry-200ms",
        "t-ab12.content.generation-results.retry-200ms",
        "t-ab12.content.generation-results.retry-1500ms",
    ]
    assert spec.retry_queue_names == (
        "t-ab12.content.generation-results.retry-200ms",
        "t-ab12.content.generation-results.retry-1500ms",
    )
    assert spec.dead_letter_exchange == topo.dead_letter_exchange == "t-ab12.vixen.dlx"
    assert retry_stage_name("q", 60) == "q.retry-60s"


@pytest.mark.parametrize("delays", [(0.0,), (1.0, -1.0)])
def test_non_positive_delays_are_refused(delays: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="positive"):
        topology(retry_delays=delays)


def test_a_queue_accepts_only_its_types_from_their_producer() -> None:
    requests = topology().queue(GATEWAY_GENERATION_REQUESTED)
    assert requests.accepted_source("generation.requested") == "/vixenbliss/content"
    assert requests.accepted_source("generation.completed") is None  # not bound to this queue
    results = topology().queue(CONTENT_GENERATION_RESULTS)
    assert results.accepted_source("generation.completed") == "/vixenbliss/inference-gateway"
    for event_type, producer in EVENT_PRODUCERS.items():
        # generation.submit: each requesting service has a source of its own (its consumer checks it).
        expected = None if producer == SERVICE_REQUESTER else event_source(producer)
        assert producer_source(event_type.value) == expected
    assert producer_source("nobody.sends.this") is None
    assert EventType.GENERATION_REQUESTED in EVENT_PRODUCERS


def test_any_name_an_operator_types_finds_the_queue() -> None:
    topo = topology(prefix="t-ab12")
    spec = topo.queue(GATEWAY_GENERATION_REQUESTED)
    for name in (spec.base_name, spec.name, spec.dlq_name, spec.base_name + ".dlq"):
        assert topo.queue_for(name) == spec
    with pytest.raises(KeyError):
        topo.queue_for("nobody.listens")
