"""The AsyncAPI 3.1 document of the events: servers and broker users, channels, operations, messages with examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts.envelope import STRUCTURED_CONTENT_TYPE, EventEnvelope
from contracts.events import EVENT_PAYLOADS, EventType
from contracts.examples import example_event, example_traceparent
from contracts.topology import (
    DEAD_LETTER_EXCHANGE,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY_DELAYS,
    EVENT_PRODUCERS,
    EVENTS_EXCHANGE,
    REPLY_QUEUE_PURPOSE,
    RETRY_EXCHANGE,
    SERVICE_REQUESTER,
    QueueSpec,
    Topology,
    producer_source,
    topology,
)

ASYNCAPI_VERSION = "3.1.0"
# The only AMQP bindings version the AsyncAPI 3.1.0 schema accepts (@asyncapi/specs 6.11: bindings/amqp/0.3.0).
AMQP_BINDING_VERSION = "0.3.0"
AMQP_PROTOCOL_VERSION = "0.9.1"
# The default of `python -m services.tools.broker_definitions` (--vhost, --user-prefix).
VHOST = "/"
BROKER_USER_PREFIX = "vixenbliss-"
RABBITMQ_CE_BINDING = (
    "https://github.com/knative-extensions/eventing-rabbitmq/blob/main/cloudevents-protocol-spec/spec.md"
)
DEVELOPMENT_USER_SCHEME = "development-user"
# W3C Trace Context, version 00: version-traceid-parentid-flags.
TRACEPARENT_PATTERN = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
# AMQP delivery mode 2: the broker writes the message to disk (quorum queues keep it on every replica).
PERSISTENT = 2


def asyncapi_document() -> dict[str, Any]:
    """The whole document: every event type's channel and message, every consumer queue, every broker user."""
    topo = topology()
    models: list[type[BaseModel]] = [EventEnvelope, *EVENT_PAYLOADS.values()]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type, model in EVENT_PAYLOADS.items():
        key = event_type.value
        messages[model.__name__] = _message(event_type, model)
        channels[key] = _routing_key_channel(event_type)
        operations[_send_operation_id(event_type)] = _send_operation(event_type)
    for spec in topo.queues:
        if spec.base_name in channels:
            raise ValueError(f"queue {spec.base_name!r} has the name of an event type: channel ids would collide")
        channels[spec.base_name] = _queue_channel(spec, topo)
        operations[_receive_operation_id(spec)] = _receive_operation(spec)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": _info(),
        "defaultContentType": STRUCTURED_CONTENT_TYPE,
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": dict(sorted(defs.get("$defs", {}).items())),
            "securitySchemes": _security_schemes(topo),
        },
    }


def services() -> list[str]:
    """Every service with a broker user: the producers, then the consumers (queues are `<service>.<purpose>`)."""
    names = [*EVENT_PRODUCERS.values(), *(_consumer_of(spec) for spec in topology().queues)]
    return list(dict.fromkeys(names))


def broker_user(service: str) -> str:
    """The broker user a service connects as outside the local stack (docs/deploy.md); for the role of the requesting
    services, the pattern each one's user follows (it is named after the service, as VIXEN_SUBMIT_SERVICES names it)."""
    return f"{BROKER_USER_PREFIX}{'<requester>' if service == SERVICE_REQUESTER else service}"


def security_scheme_id(service: str) -> str:
    """The id, under components/securitySchemes, of a service's broker user."""
    return f"broker-user-{service}"


def queue_arguments(spec: QueueSpec, topo: Topology) -> dict[str, Any]:
    """The arguments a consumer queue is declared with (the broker module's `queue_arguments`, which a test
    compares): a quorum queue with a delivery limit and at-least-once dead-lettering."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": spec.delivery_limit,
        "x-dead-letter-exchange": topo.dead_letter_exchange,
        "x-dead-letter-routing-key": spec.dead_letter_routing_key,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _consumer_of(spec: QueueSpec) -> str:
    return spec.base_name.split(".", 1)[0]


def _send_operation_id(event_type: EventType) -> str:
    return f"{EVENT_PRODUCERS[event_type]}.send.{event_type.value}"


def _receive_operation_id(spec: QueueSpec) -> str:
    service, purpose = spec.base_name.split(".", 1)
    return f"{service}.receive.{purpose}"


def _info() -> dict[str, Any]:
    delays = ", ".join(f"{d:g}" for d in DEFAULT_RETRY_DELAYS)
    return {
        "title": "VixenBliss events",
        "version": "1.0.0",
        "description": (
            "Events of the VixenBliss generation platform on the RabbitMQ topic exchange "
            f"{EVENTS_EXCHANGE}; the routing key is the event type. Every message is a CloudEvent 1.0 "
            "in the structured content mode of the CloudEvents RabbitMQ protocol binding "
            f"({RABBITMQ_CE_BINDING}): content type {STRUCTURED_CONTENT_TYPE}, the whole event as JSON "
            "in the body, data as application/json. Extension attribute correlationid carries the "
            "generation id (or the request that caused the event). AMQP properties: persistent (delivery mode 2), "
            "message_id = event id, W3C traceparent in the headers. Payloads carry schema_version; "
            "consumers ignore unknown fields. Each consumer group reads a quorum queue of its own (the channels "
            "named `<service>.<purpose>`). A consumer dead-letters at once, "
            "unread, a message that is not a structured-mode CloudEvent, is larger than "
            f"{DEFAULT_MAX_MESSAGE_BYTES} bytes, or whose source is not its type's producer; a handler "
            "failure is retried through the queue's retry stages (quorum queues whose message TTL dead-letters "
            f"back to the queue, by default after {delays} s; the consumer publishes to them through the topic "
            f"exchange {RETRY_EXCHANGE}), then sent to the queue's dead-letter queue (through {RETRY_EXCHANGE} by "
            f"the consumer, through {DEAD_LETTER_EXCHANGE} by the broker past the delivery limit), the reason in the "
            "x-vixen-death-reason header. Outside the local stack each service connects as a broker user of its "
            "own that may publish only the events it produces and read only its own queues (the security schemes; "
            "docs/deploy.md)."
        ),
    }


def _servers() -> dict[str, Any]:
    service_users = [{"$ref": f"#/components/securitySchemes/{security_scheme_id(s)}"} for s in services()]
    return {
        "local": {
            "host": "127.0.0.1:5672",
            "protocol": "amqp",
            "protocolVersion": AMQP_PROTOCOL_VERSION,
            "title": "Local broker",
            "summary": "The RabbitMQ of make demo, make up and the tests.",
            "description": (
                "Plain AMQP on the loopback interface, as RabbitMQ's development user: every service declares the "
                "topology itself (RABBITMQ_DECLARE=all). Tests prefix every name with a name of their own."
            ),
            "security": [{"$ref": f"#/components/securitySchemes/{DEVELOPMENT_USER_SCHEME}"}],
            "tags": [{"name": "env:local"}],
        },
        "compose": {
            "host": "rabbitmq:5672",
            "protocol": "amqp",
            "protocolVersion": AMQP_PROTOCOL_VERSION,
            "title": "Compose broker",
            "summary": "The RabbitMQ of deploy/compose.yaml (published on the Docker host's port 5672).",
            "description": (
                "Plain AMQP inside the compose network. The broker loads its users and topology at boot from the "
                "definitions python -m services.tools.broker_definitions writes; the broker-topology job declares "
                "the topology with the operator's user and each service connects as its own user with "
                "RABBITMQ_DECLARE=check (it declares nothing)."
            ),
            "security": service_users,
            "tags": [{"name": "env:compose"}],
        },
        "production": {
            "host": "{host}:5671",
            "protocol": "amqps",
            "protocolVersion": AMQP_PROTOCOL_VERSION,
            "title": "Production broker",
            "summary": "The deployment's RabbitMQ, over TLS.",
            "description": (
                "AMQP over TLS: each service's RABBITMQ_URL secret is "
                "amqps://vixenbliss-<service>:<password>@<host>:5671/<vhost> (aio-pika checks the broker's "
                "certificate against the system's CAs). Users, permissions and topic permissions come from "
                "python -m services.tools.broker_definitions, the topology from the broker-topology Job with the "
                "operator's user; the services run with RABBITMQ_DECLARE=check (docs/deploy.md)."
            ),
            "variables": {
                "host": {"description": "the broker's host name, as in the services' RABBITMQ_URL secrets"},
            },
            "security": service_users,
            "tags": [{"name": "env:production"}],
        },
    }


def _security_schemes(topo: Topology) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        DEVELOPMENT_USER_SCHEME: {
            "type": "userPassword",
            "description": (
                "Local stack only: RabbitMQ's development user (guest/guest on 127.0.0.1, the only address RabbitMQ "
                "lets it log in from), with every right: configure, write and read on every name."
            ),
        }
    }
    for service in services():
        produced = [t.value for t, producer in EVENT_PRODUCERS.items() if producer == service]
        queues = [spec.name for spec in topo.queues_of(service)]
        may = [
            f"publish on {topo.events_exchange} only {', '.join(produced)}" if produced else "publish no event",
            f"read only {', '.join(queues)} and send its failed messages to their retry stages and dead-letter "
            f"queues through {topo.retry_exchange}"
            if queues
            else "read no queue",
        ]
        if service == SERVICE_REQUESTER:
            queues = [f"<requester>.{REPLY_QUEUE_PURPOSE}"]
            may[1] = f"read only its own {queues[0]} (content's answers to its commands)"
        owner = (
            "each requesting service (one named in content's VIXEN_SUBMIT_SERVICES; <requester> is its name)"
            if service == SERVICE_REQUESTER
            else service
        )
        schemes[security_scheme_id(service)] = {
            "type": "userPassword",
            "description": (
                f"The broker user {broker_user(service)} of {owner} (AMQP PLAIN over the server's connection; the "
                f"password is in the service's RABBITMQ_URL). It may {'; it may '.join(may)}; it configures nothing "
                "(configure ^$: the topology is declared at deploy time)."
            ),
            "x-broker-user": broker_user(service),
            "x-publishes": produced,
            "x-reads": queues,
        }
    return schemes


def _exchange_binding() -> dict[str, Any]:
    return {"name": EVENTS_EXCHANGE, "type": "topic", "durable": True, "autoDelete": False, "vhost": VHOST}


def _routing_key_channel(event_type: EventType) -> dict[str, Any]:
    key, model = event_type.value, EVENT_PAYLOADS[event_type]
    return {
        "address": key,
        "title": f"{key} on {EVENTS_EXCHANGE}",
        "summary": f"Routing key {key} on the topic exchange {EVENTS_EXCHANGE}: what {EVENT_PRODUCERS[event_type]} "
        "publishes.",
        "messages": {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}},
        "bindings": {
            "amqp": {"is": "routingKey", "exchange": _exchange_binding(), "bindingVersion": AMQP_BINDING_VERSION}
        },
    }


def _queue_channel(spec: QueueSpec, topo: Topology) -> dict[str, Any]:
    names = [EVENT_PAYLOADS[EventType(key)].__name__ for key in spec.routing_keys]
    return {
        "address": spec.name,
        "title": f"queue {spec.name}",
        "summary": f"The quorum queue {_consumer_of(spec)} reads, bound to {topo.events_exchange} with "
        f"{', '.join(spec.routing_keys)}.",
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in names},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {"name": spec.name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": VHOST},
                "x-arguments": queue_arguments(spec, topo),
                "x-bindings": [{"exchange": topo.events_exchange, "routingKey": key} for key in spec.routing_keys],
                "x-accepted-sources": {key: producer_source(key) for key in spec.routing_keys},
                "x-max-message-bytes": spec.max_message_bytes,
                "x-retry-exchange": topo.retry_exchange,
                "x-retry-queues": [
                    {"name": stage.name, "x-message-ttl": stage.ttl_ms} for stage in spec.unique_retry_stages
                ],
                "x-dead-letter-queue": spec.dlq_name,
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _send_operation(event_type: EventType) -> dict[str, Any]:
    key, model = event_type.value, EVENT_PAYLOADS[event_type]
    producer = EVENT_PRODUCERS[event_type]
    return {
        "action": "send",
        "channel": {"$ref": f"#/channels/{key}"},
        "title": f"{producer} publishes {key}",
        "summary": f"{producer} publishes {key} through its outbox relay, with publisher confirms.",
        "description": (
            f"Published persistent and mandatory (an unroutable message is returned, never dropped) as "
            f"{broker_user(producer)} outside the local stack, with no CC or BCC header: every consumer queue is "
            "bound to the routing key."
        ),
        "messages": [{"$ref": f"#/channels/{key}/messages/{model.__name__}"}],
        "bindings": {"amqp": {"deliveryMode": PERSISTENT, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _receive_operation(spec: QueueSpec) -> dict[str, Any]:
    service = _consumer_of(spec)
    names = [EVENT_PAYLOADS[EventType(key)].__name__ for key in spec.routing_keys]
    return {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{spec.base_name}"},
        "title": f"{service} consumes {spec.name}",
        "summary": f"{service} consumes {', '.join(spec.routing_keys)} from {spec.name} (manual ack, idempotent).",
        "description": (
            f"Read as {broker_user(service)} outside the local stack. Each message is acknowledged after its "
            "effect is committed with its event id (a redelivery is recognised and acknowledged again)."
        ),
        "messages": [{"$ref": f"#/channels/{spec.base_name}/messages/{name}"} for name in names],
        "bindings": {"amqp": {"ack": True, "deliveryMode": PERSISTENT, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _message(event_type: EventType, model: type[BaseModel]) -> dict[str, Any]:
    envelope = example_event(event_type)
    # The body the services send: absent attributes are left out (the CloudEvents SDK writes no nulls).
    body = {name: value for name, value in envelope.model_dump(mode="json").items() if value is not None}
    return {
        "name": event_type.value,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip(),
        "contentType": STRUCTURED_CONTENT_TYPE,
        "correlationId": {"location": "$message.payload#/correlationid"},
        "headers": {
            "type": "object",
            "properties": {
                "traceparent": {
                    "type": "string",
                    "pattern": TRACEPARENT_PATTERN,
                    "description": "W3C trace context of the producer",
                }
            },
        },
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/EventEnvelope"},
                {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {"const": event_type.value},
                        "data": {"$ref": f"#/components/schemas/{model.__name__}"},
                    },
                },
            ]
        },
        "examples": [
            {
                "name": event_type.value.replace(".", "-"),
                "summary": f"A {event_type.value} event as {EVENT_PRODUCERS[event_type]} sends it.",
                "headers": {"traceparent": example_traceparent(event_type)},
                "payload": body,
            }
        ],
        "bindings": {"amqp": {"messageType": event_type.value, "bindingVersion": AMQP_BINDING_VERSION}},
    }
