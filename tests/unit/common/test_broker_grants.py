"""The broker definitions' permission patterns, matched the way RabbitMQ matches them (a regular expression search
on the resource name): no user configures anything, each service writes and reads only what its role needs, the
autoscaler nothing at all."""

from __future__ import annotations

import re

import pytest

from contracts.events import EventType
from contracts.topology import EVENT_PRODUCERS, REPLY_EVENTS, reply_routing_key, routing_key, topology
from services.common.messaging.broker import declarations
from services.tools.broker_definitions import (
    AUTOSCALER,
    AUTOSCALER_LIMITS,
    ROLES,
    SERVICES,
    definitions,
    grants,
)

TOPO = topology()
EXCHANGES = [name for name, _ in declarations(TOPO).exchanges]
QUEUES = [name for name, _ in declarations(TOPO).queues]
# The default exchange is checked under the name amq.default (an empty name matches `^$`, and names nothing).
EVERY_NAME = [*EXCHANGES, *QUEUES, "amq.default", "amq.topic", "vixen.stolen"]


def matching(pattern: str, names: list[str]) -> set[str]:
    return {name for name in names if re.search(pattern, name)}


@pytest.mark.parametrize("role", ROLES)
def test_no_role_may_configure_anything(role: str) -> None:
    assert matching(grants(TOPO, role).configure, EVERY_NAME) == set()


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reads_only_the_queues_it_consumes(role: str) -> None:
    assert matching(grants(TOPO, role).read, EVERY_NAME) == {spec.name for spec in TOPO.queues_of(role)}


@pytest.mark.parametrize("role", ROLES)
def test_each_role_writes_only_to_the_exchanges_it_publishes_on(role: str) -> None:
    produces = any(producer == role for producer in EVENT_PRODUCERS.values())
    consumes = bool(TOPO.queues_of(role))
    expected = {TOPO.events_exchange} if produces else set()
    expected |= {TOPO.retry_exchange} if consumes else set()
    assert matching(grants(TOPO, role).write, EVERY_NAME) == expected


@pytest.mark.parametrize("role", ROLES)
def test_topic_permissions_let_a_role_publish_its_own_keys_only_and_bind_none(role: str) -> None:
    granted = grants(TOPO, role)
    keys = [routing_key(event) for event in EventType]
    retry_keys = [key for spec in TOPO.queues for key in (spec.dead_letter_routing_key, *spec.retry_queue_names)]
    for exchange, (_, read) in granted.topics.items():
        assert matching(read, [*keys, *retry_keys, "#"]) == set(), exchange
    # Every exchange it may write on carries a topic permission: nothing unlisted is left unrestricted.
    assert matching(granted.write, EXCHANGES) == set(granted.topics)
    if TOPO.events_exchange in granted.topics:
        # Without requesting services, content's answers have no key: their keys end with a requester's name.
        produced = {
            routing_key(event)
            for event, producer in EVENT_PRODUCERS.items()
            if producer == role and event not in REPLY_EVENTS
        }
        assert matching(granted.topics[TOPO.events_exchange][0], keys) == produced
    if TOPO.retry_exchange in granted.topics:
        own = {key for spec in TOPO.queues_of(role) for key in (spec.dead_letter_routing_key, *spec.retry_queue_names)}
        assert matching(granted.topics[TOPO.retry_exchange][0], retry_keys) == own


def test_the_autoscaler_gets_no_permission_no_tag_and_a_connection_limit() -> None:
    granted = grants(TOPO, AUTOSCALER)
    assert (granted.configure, granted.write, granted.read, granted.topics) == ("^$", "^$", "^$", {})
    document = definitions(TOPO, {role: "a-password" for role in ROLES}, admin=("admin", "an-admin-password"))
    users = {user["name"]: user for user in document["users"]}
    assert users[f"vixenbliss-{AUTOSCALER}"]["limits"] == AUTOSCALER_LIMITS
    assert {name for name, user in users.items() if user["tags"]} == {"admin"}
    assert {p["user"] for p in document["permissions"] if p["configure"] != "^$"} == {"admin"}
    assert {p["user"] for p in document["topic_permissions"]} == {f"vixenbliss-{s}" for s in SERVICES}


def test_a_role_the_code_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="no broker role named 'keda'"):
        definitions(TOPO, {"keda": "a-password"})


REQUESTING = topology(requesters=("scheduler", "moderation"))


def test_a_requesting_service_may_publish_generation_submit_only_and_read_its_own_answers() -> None:
    granted = grants(REQUESTING, "scheduler")
    keys = [routing_key(event) for event in EventType] + [
        reply_routing_key(event, who) for event in REPLY_EVENTS for who in REQUESTING.requesters
    ]
    names = [name for name, _ in declarations(REQUESTING).queues]
    assert granted.configure == "^$"
    assert matching(granted.topics[REQUESTING.events_exchange][0], keys) == {"generation.submit"}
    assert matching(granted.topics[REQUESTING.events_exchange][1], [*keys, "#", "generation.*.scheduler"]) == set()
    assert matching(granted.read, names) == {"scheduler.generation-replies"}


def test_content_answers_each_requesting_service_under_its_own_keys_and_takes_their_commands() -> None:
    granted = grants(REQUESTING, "content")
    answers = {reply_routing_key(event, who) for event in REPLY_EVENTS for who in REQUESTING.requesters}
    keys = [routing_key(event) for event in EventType] + sorted(answers) + ["generation.finished.stranger"]
    assert matching(granted.topics[REQUESTING.events_exchange][0], keys) == answers | {
        "generation.requested",
        "generation.canceled",
    }
    names = [name for name, _ in declarations(REQUESTING).queues]
    assert "content.generation-submits" in matching(granted.read, names)
    assert not matching(granted.read, names) & {"scheduler.generation-replies", "moderation.generation-replies"}


def test_a_requesting_services_user_needs_it_named_in_the_topology() -> None:
    with pytest.raises(ValueError, match="no broker role named 'stranger'"):
        definitions(REQUESTING, {"stranger": "a-password"})
    users = {user["name"] for user in definitions(REQUESTING, {"scheduler": "a-password"})["users"]}
    assert users == {"vixenbliss-scheduler"}
