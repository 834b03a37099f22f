"""Export JSON Schema for every contract model and an AsyncAPI 3.0 document; `--check` verifies them."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from contracts import worker
from contracts.envelope import STRUCTURED_CONTENT_TYPE, EventEnvelope
from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.events import EVENT_PAYLOADS, EventType
from contracts.topology import (
    DEAD_LETTER_EXCHANGE,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY_DELAYS,
    EVENT_PRODUCERS,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    QueueSpec,
    producer_source,
    topology,
)

DEFAULT_DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
AMQP_BINDING_VERSION = "0.3.0"
RABBITMQ_CE_BINDING = (
    "https://github.com/knative-extensions/eventing-rabbitmq/blob/main/cloudevents-protocol-spec/spec.md"
)

WORKER_MODELS: dict[str, type[BaseModel]] = {
    "worker-request": worker.WorkerRequest,
    "worker-success": worker.WorkerSuccess,
    "worker-error": worker.WorkerError,
    "worker-job-submitted": worker.JobSubmitted,
    "worker-job-status": worker.JobStatus,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every model's JSON Schema, keyed by its file name under docs/schemas/ (without .json)."""
    out: dict[str, dict[str, Any]] = {}
    for event_type, payload_model in EVENT_PAYLOADS.items():
        out[f"event.{event_type.value}"] = payload_model.model_json_schema()
    out["cloudevent-envelope"] = EventEnvelope.model_json_schema()
    for name, model in WORKER_MODELS.items():
        out[name] = model.model_json_schema()
    out["error-codes"] = {
        "title": "ErrorCodes",
        "description": "generation.failed error_code values: the worker's codes, then the gateway's",
        "oneOf": [
            TypeAdapter(WorkerErrorCode).json_schema(),
            TypeAdapter(GatewayErrorCode).json_schema(),
        ],
    }
    return {name: {"$schema": JSON_SCHEMA_DIALECT, **schema} for name, schema in sorted(out.items())}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the events on the events exchange."""
    models: list[type[BaseModel]] = [EventEnvelope, *EVENT_PAYLOADS.values()]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))
    exchange = {
        "name": EVENTS_EXCHANGE,
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    consumers: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for spec in topology().queues:
        for key in spec.routing_keys:
            consumers.setdefault(key, []).append((spec.name, _queue_extension(spec, key)))

    for event_type, model in EVENT_PAYLOADS.items():
        key = event_type.value
        messages[model.__name__] = _message(event_type, model)
        channels[key] = {
            "address": key,
            "title": f"{key} on {EVENTS_EXCHANGE}",
            "messages": {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0"}},
        }
        producer = EVENT_PRODUCERS[event_type]
        operations[f"{producer}.send.{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{producer} publishes {key} (through its outbox, with publisher confirms)",
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
        }
        for queue_name, queue_ext in consumers.get(key, []):
            service = queue_name.split(".", 1)[0]
            operations[f"{service}.receive.{key}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"{service} consumes {key} from queue {queue_name} (manual ack, idempotent)",
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
                "x-queue": queue_ext,
            }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "VixenBliss events",
            "version": "1.0.0",
            "description": (
                "Events of the VixenBliss generation platform on the RabbitMQ topic exchange "
                f"{EVENTS_EXCHANGE}; the routing key is the event type. Every message is a CloudEvent 1.0 "
                "in the structured content mode of the CloudEvents RabbitMQ protocol binding "
                f"({RABBITMQ_CE_BINDING}): content type {STRUCTURED_CONTENT_TYPE}, the whole event as JSON "
                "in the body, data as application/json. Extension attribute correlationid carries the "
                "generation id (or the request that caused the event). AMQP properties: persistent, "
                "message_id = event id, W3C traceparent in the headers. Payloads carry schema_version; "
                "consumers ignore unknown fields. Queues are quorum queues. A consumer dead-letters at once, "
                "unread, a message that is not a structured-mode CloudEvent, is larger than "
                f"{DEFAULT_MAX_MESSAGE_BYTES} bytes, or whose source is not its type's producer; a handler "
                "failure is retried through the queue's retry stages (quorum queues whose message TTL dead-letters "
                "back to the queue, by default after "
                + ", ".join(f"{d:g}" for d in DEFAULT_RETRY_DELAYS)
                + f" s; the consumer publishes to them through the topic exchange {RETRY_EXCHANGE}), then sent to "
                f"the queue's dead-letter queue (through {RETRY_EXCHANGE} by the consumer, through "
                f"{DEAD_LETTER_EXCHANGE} by the broker past the delivery limit), the reason in the "
                "x-vixen-death-reason header. Each service has a broker user of its own that may publish only the "
                "events it produces and reach only its own queues (docs/deploy.md)."
            ),
        },
        "defaultContentType": STRUCTURED_CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "the local RabbitMQ used by make demo and the tests",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _queue_extension(spec: QueueSpec, routing_key: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "x-queue-type": "quorum",
        "x-delivery-limit": spec.delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "accepted-source": producer_source(routing_key),
        "max-message-bytes": spec.max_message_bytes,
        "retry-exchange": RETRY_EXCHANGE,
        "retry-queues": [{"name": stage.name, "x-message-ttl": stage.ttl_ms} for stage in spec.retry_stages],
        "dead-letter-queue": spec.dlq_name,
    }


def _message(event_type: EventType, model: type[BaseModel]) -> dict[str, Any]:
    doc = (model.__doc__ or "").strip()
    return {
        "name": event_type.value,
        "title": model.__name__,
        "summary": doc,
        "contentType": STRUCTURED_CONTENT_TYPE,
        "correlationId": {"location": "$message.payload#/correlationid"},
        "headers": {
            "type": "object",
            "properties": {"traceparent": {"type": "string", "description": "W3C trace context of the producer"}},
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
        "bindings": {"amqp": {"messageType": event_type.value, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def to_yaml(value: Any) -> str:
    """YAML text of plain data, by PyYAML (a development dependency: contracts themselves need pydantic only)."""
    import yaml

    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)


def rendered_files() -> dict[str, str]:
    """Path under docs/ → file content, for every exported file."""
    files = {
        f"schemas/{name}.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in json_schemas().items()
    }
    header = "# Generated by `python -m contracts.export` from contracts/: do not edit by hand.\n"
    files["asyncapi.yaml"] = header + to_yaml(asyncapi_document())
    return files


def write(docs_dir: Path) -> list[str]:
    """Write every file; remove stale schema files; return the paths written."""
    files = rendered_files()
    (docs_dir / "schemas").mkdir(parents=True, exist_ok=True)
    for stale in sorted((docs_dir / "schemas").glob("*.json")):
        if f"schemas/{stale.name}" not in files:
            stale.unlink()
    for rel, text in files.items():
        (docs_dir / rel).write_text(text, encoding="utf-8")
    return sorted(files)


def check(docs_dir: Path) -> list[str]:
    """Differences between the files on disk and the models, one summary block per file."""
    problems: list[str] = []
    files = rendered_files()
    for rel, expected in sorted(files.items()):
        path = docs_dir / rel
        if not path.exists():
            problems.append(f"missing: docs/{rel}")
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = list(
                difflib.unified_diff(
                    actual.splitlines(), expected.splitlines(), f"docs/{rel}", "models", lineterm="", n=1
                )
            )
            shown = "\n".join(diff[:20]) + ("\n  ..." if len(diff) > 20 else "")
            problems.append(f"differs: docs/{rel}\n{shown}")
    schema_dir = docs_dir / "schemas"
    if schema_dir.is_dir():
        for path in sorted(schema_dir.glob("*.json")):
            if f"schemas/{path.name}" not in files:
                problems.append(f"stale: docs/schemas/{path.name} (no model exports it)")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the files, or with --check compare them and exit 1 on any difference."""
    parser = argparse.ArgumentParser(prog="python -m contracts.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    parser.add_argument("--docs-dir", type=Path, default=DEFAULT_DOCS_DIR, help="default: the repo's docs/")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.docs_dir)
        if problems:
            print(f"{len(problems)} exported file(s) differ from the models:", file=sys.stderr)
            for problem in problems:
                print(problem, file=sys.stderr)
            print("run `python -m contracts.export` and commit the result", file=sys.stderr)
            return 1
        print(f"docs/ matches the models ({len(rendered_files())} files)")
        return 0
    written = write(args.docs_dir)
    print(f"wrote {len(written)} files under {args.docs_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
