"""The AsyncAPI document agrees with the code: topology, queue arguments, broker users, delivery mode, examples."""

from __future__ import annotations

import json
import re
from typing import Any

import aio_pika
import jsonschema_rs
import pytest
import yaml

from contracts.asyncapi import PERSISTENT, broker_user, security_scheme_id, services
from contracts.events import EVENT_PAYLOADS, EventType
from contracts.examples import example_event
from contracts.export import DEFAULT_DOCS_DIR
from contracts.topology import EVENT_PRODUCERS, REPLY_EVENTS, SERVICE_REQUESTER, reply_routing_key, topology
from services.common.messaging.broker import declarations, queue_arguments
from services.common.messaging.events import encode_event
from services.tools.broker_definitions import SERVICES, definitions, grants


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The committed document, as YAML readers see it."""
    loaded: dict[str, Any] = yaml.safe_load((DEFAULT_DOCS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    return loaded


def message_of(doc: dict[str, Any], event_type: EventType) -> dict[str, Any]:
    message: dict[str, Any] = doc["components"]["messages"][EVENT_PAYLOADS[event_type].__name__]
    return message


def validator_for(doc: dict[str, Any], pointer: str) -> jsonschema_rs.Draft7Validator:
    """A validator for the schema at `pointer` in the document, its #/components refs resolved in the document.
    Draft 7: AsyncAPI's default schema format is a superset of JSON Schema draft 07."""
    return jsonschema_rs.Draft7Validator({"allOf": [{"$ref": f"#{pointer}"}], "components": doc["components"]})


def test_the_document_is_asyncapi_3_1_with_amqp_bindings_0_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.1.0"
    versions = {
        binding["bindingVersion"]
        for section in ("channels", "operations")
        for item in doc[section].values()
        for binding in item["bindings"].values()
    } | {m["bindings"]["amqp"]["bindingVersion"] for m in doc["components"]["messages"].values()}
    assert versions == {"0.3.0"}


def test_each_event_type_is_a_routing_key_channel_on_the_durable_topic_exchange(doc: dict[str, Any]) -> None:
    for event_type in EventType:
        channel = doc["channels"][event_type.value]
        amqp = channel["bindings"]["amqp"]
        assert channel["address"] == event_type.value
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"] == {
            "name": topology().events_exchange,
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "/",
        }
        assert list(channel["messages"]) == [EVENT_PAYLOADS[event_type].__name__]


def test_each_consumer_queue_is_a_channel_declared_as_the_broker_declares_it(doc: dict[str, Any]) -> None:
    topo = topology()
    plan = declarations(topo)
    declared = dict(plan.queues)
    for spec in topo.queues:
        amqp = doc["channels"][spec.base_name]["bindings"]["amqp"]
        assert amqp["is"] == "queue"
        assert amqp["queue"]["name"] == spec.name
        assert amqp["queue"]["durable"] is True
        assert amqp["x-arguments"] == queue_arguments(spec, topo) == declared[spec.name]
        assert amqp["x-arguments"]["x-queue-type"] == "quorum"
        bound = {(b["exchange"], b["routingKey"]) for b in amqp["x-bindings"]}
        assert bound == {(ex, key) for ex, queue, key in plan.bindings if queue == spec.name}
        retry = [(q["name"], q["x-message-ttl"]) for q in amqp["x-retry-queues"]]
        assert retry == [(name, declared[name]["x-message-ttl"]) for name in spec.retry_queue_names]
        assert amqp["x-dead-letter-queue"] == spec.dlq_name and spec.dlq_name in declared


def test_operations_send_each_event_once_and_receive_every_binding(doc: dict[str, Any]) -> None:
    sends = [op for op in doc["operations"].values() if op["action"] == "send"]
    assert sorted(op["channel"]["$ref"] for op in sends) == sorted(f"#/channels/{t.value}" for t in EventType)
    received: set[tuple[str, str]] = set()
    for op_id, op in doc["operations"].items():
        if op["action"] != "receive":
            continue
        channel_id = op["channel"]["$ref"].removeprefix("#/channels/")
        queue = doc["channels"][channel_id]["bindings"]["amqp"]["queue"]["name"]
        assert op_id.startswith(channel_id.split(".", 1)[0] + ".receive."), op_id
        for ref in op["messages"]:
            assert ref["$ref"].startswith(f"#/channels/{channel_id}/messages/")
            received.add((queue, doc["channels"][channel_id]["messages"][ref["$ref"].rsplit("/", 1)[1]]["$ref"]))
    plan = declarations(topology())
    expected = {
        (queue, f"#/components/messages/{EVENT_PAYLOADS[EventType(key)].__name__}")
        for exchange, queue, key in plan.bindings
        if exchange == topology().events_exchange
    }
    assert received == expected


def test_operations_say_persistent_delivery_as_the_services_publish(doc: dict[str, Any]) -> None:
    sent = encode_event(example_event(EventType.GENERATION_REQUESTED)).to_message()
    assert sent.delivery_mode == aio_pika.DeliveryMode.PERSISTENT == PERSISTENT == 2
    for op_id, op in doc["operations"].items():
        assert op["bindings"]["amqp"]["deliveryMode"] == 2, op_id
        if op["action"] == "send":
            assert op["bindings"]["amqp"]["mandatory"] is True
            assert "cc" not in op["bindings"]["amqp"] and "bcc" not in op["bindings"]["amqp"]
        else:
            assert op["bindings"]["amqp"]["ack"] is True


def test_servers_local_and_production_with_their_users(doc: dict[str, Any]) -> None:
    servers = doc["servers"]
    assert {"local", "production"} <= set(servers)
    assert servers["local"]["protocol"] == "amqp" and servers["local"]["host"] == "127.0.0.1:5672"
    assert servers["production"]["protocol"] == "amqps" and servers["production"]["host"].endswith(":5671")
    assert set(re.findall(r"{(\w+)}", servers["production"]["host"])) == set(servers["production"]["variables"])
    service_refs = [{"$ref": f"#/components/securitySchemes/{security_scheme_id(s)}"} for s in services()]
    assert servers["production"]["security"] == service_refs
    schemes = doc["components"]["securitySchemes"]
    for server in servers.values():
        assert server["security"], server["host"]
        for ref in server["security"]:
            assert schemes[ref["$ref"].rsplit("/", 1)[1]]["type"] == "userPassword"


def test_broker_users_are_the_ones_the_definitions_create_with_their_grants(doc: dict[str, Any]) -> None:
    # The role of the requesting services (VIXEN_SUBMIT_SERVICES) is not a user of its own: each such service has one
    # (vixenbliss-<service>), and the default topology names none.
    assert set(services()) == {*SERVICES, SERVICE_REQUESTER}
    topo = topology()
    users = {user["name"] for user in definitions(topo, dict.fromkeys(SERVICES, "example-password"))["users"]}
    schemes = doc["components"]["securitySchemes"]
    assert {schemes[security_scheme_id(s)]["x-broker-user"] for s in SERVICES} == users
    requesting = schemes[security_scheme_id(SERVICE_REQUESTER)]
    assert (requesting["x-publishes"], requesting["x-reads"]) == (
        ["generation.submit"],
        ["<requester>.generation-replies"],
    )
    # Named by the pattern each requesting service's own user follows, not as a user that nobody creates.
    assert requesting["x-broker-user"] == "vixenbliss-<requester>"
    assert "<requester>.generation-replies" in requesting["description"]
    # Content's answers to a requesting service go under `<type>.<service>`: granted once one is named.
    answering = topology(requesters=("scheduler",))

    def keys_of(event_type: EventType) -> list[str]:
        if event_type in REPLY_EVENTS:
            return [reply_routing_key(event_type, "scheduler")]
        return [event_type.value]

    for service in SERVICES:
        scheme, granted = schemes[security_scheme_id(service)], grants(answering, service)
        assert scheme["x-broker-user"] == broker_user(service)
        publish_pattern = granted.topics.get(answering.events_exchange, ("^$", "^$"))[0]
        granted_types = {t.value for t in EventType if any(re.fullmatch(publish_pattern, k) for k in keys_of(t))}
        assert granted_types == set(scheme["x-publishes"])
        granted = grants(topo, service)
        assert {t.value for t, p in EVENT_PRODUCERS.items() if p == service} == set(scheme["x-publishes"])
        assert {s.name for s in topo.queues if re.fullmatch(granted.read, s.name)} == set(scheme["x-reads"])


@pytest.mark.parametrize("event_type", list(EventType), ids=str)
def test_the_example_validates_against_its_message_schema(doc: dict[str, Any], event_type: EventType) -> None:
    name = EVENT_PAYLOADS[event_type].__name__
    (example,) = message_of(doc, event_type)["examples"]
    validator_for(doc, f"/components/messages/{name}/payload").validate(example["payload"])
    validator_for(doc, f"/components/messages/{name}/headers").validate(example["headers"])
    # The data also matches the standalone schema of docs/schemas/, in its own dialect (2020-12).
    standalone = json.loads((DEFAULT_DOCS_DIR / "schemas" / f"event.{event_type.value}.json").read_text())
    jsonschema_rs.Draft202012Validator(standalone).validate(example["payload"]["data"])


@pytest.mark.parametrize("event_type", list(EventType), ids=str)
def test_the_message_schema_refuses_a_broken_example(doc: dict[str, Any], event_type: EventType) -> None:
    name = EVENT_PAYLOADS[event_type].__name__
    (example,) = message_of(doc, event_type)["examples"]
    payload_validator = validator_for(doc, f"/components/messages/{name}/payload")
    required = doc["components"]["schemas"][name]["required"]
    without_field = {**example["payload"], "data": {k: v for k, v in example["payload"]["data"].items()}}
    del without_field["data"][required[0]]
    other_type = {**example["payload"], "type": "avatar.created" if event_type.value != "avatar.created" else "x.y"}
    for broken in (without_field, other_type, {k: v for k, v in example["payload"].items() if k != "id"}):
        assert not payload_validator.is_valid(broken)
    assert not validator_for(doc, f"/components/messages/{name}/headers").is_valid({"traceparent": "not-a-trace"})
