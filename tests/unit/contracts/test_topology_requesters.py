"""The topology of generations requested by event: content's queue of commands and one reply queue per requesting
service, each bound to that service's own answers; names refused that would collide with the platform's."""

from __future__ import annotations

import pytest

from contracts.events import EventType
from contracts.topology import (
    CONTENT_GENERATION_SUBMITS,
    REPLY_EVENTS,
    SERVICE_CONTENT,
    producer_source,
    reply_queue_base_name,
    reply_routing_key,
    requester_name_problem,
    source_service,
    topology,
)


def test_without_requesting_services_there_is_no_command_or_reply_queue() -> None:
    topo = topology()
    assert topo.requesters == ()
    with pytest.raises(KeyError):
        topo.queue(CONTENT_GENERATION_SUBMITS)
    assert topo.published_keys(SERVICE_CONTENT) == ("generation.requested", "generation.canceled")


def test_each_requesting_service_gets_a_reply_queue_bound_to_its_own_answers_only() -> None:
    topo = topology("t-1", requesters=("scheduler", "moderation"))
    submits = topo.queue(CONTENT_GENERATION_SUBMITS)
    assert (submits.name, submits.routing_keys) == ("t-1.content.generation-submits", ("generation.submit",))
    assert submits in topo.queues_of(SERVICE_CONTENT)
    scheduler = topo.queue(reply_queue_base_name("scheduler"))
    assert scheduler.name == "t-1.scheduler.generation-replies"
    assert scheduler.routing_keys == (
        "generation.accepted.scheduler",
        "generation.rejected.scheduler",
        "generation.finished.scheduler",
    )
    # Its consumer takes the answers' types, from content only.
    assert scheduler.accepts("generation.finished") and not scheduler.accepts("generation.finished.moderation")
    assert scheduler.accepted_source("generation.rejected") == "/vixenbliss/content"
    assert topo.queues_of("scheduler") == (scheduler,)
    assert topo.published_keys("scheduler") == ("generation.submit",)
    content_keys = set(topo.published_keys(SERVICE_CONTENT))
    assert {reply_routing_key(t, "moderation") for t in REPLY_EVENTS} <= content_keys
    assert "generation.accepted" not in content_keys  # never under the bare type: it would reach no queue


def test_a_command_has_no_single_producer_source() -> None:
    assert producer_source(EventType.GENERATION_SUBMIT.value) is None
    assert producer_source(EventType.GENERATION_REJECTED.value) == "/vixenbliss/content"
    assert source_service("/vixenbliss/scheduler") == "scheduler"
    for other in ("/vixenbliss/", "/elsewhere/scheduler", "/vixenbliss/a/b", "/vixenbliss/Sched"):
        assert source_service(other) is None, other


@pytest.mark.parametrize(
    "name", ["", "Scheduler", "9lives", "a.b", "a*", "a#", "content", "inference-gateway", "autoscaler", "x" * 64]
)
def test_names_that_would_break_routing_or_collide_are_refused(name: str) -> None:
    assert requester_name_problem(name) is not None
    with pytest.raises(ValueError, match="requesting service"):
        topology(requesters=(name,))


def test_a_reply_key_is_only_for_answers() -> None:
    with pytest.raises(ValueError):
        reply_routing_key(EventType.GENERATION_REQUESTED, "scheduler")
