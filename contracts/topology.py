"""RabbitMQ names: exchanges, routing keys, queues and their bindings, optionally prefixed per test run."""

from dataclasses import dataclass

from contracts.events import EventType

EVENTS_EXCHANGE = "vixen.events"
DEAD_LETTER_EXCHANGE = "vixen.dlx"
# Deliveries per message before the broker dead-letters it (quorum queue x-delivery-limit).
DELIVERY_LIMIT = 5
DLQ_SUFFIX = ".dlq"

SERVICE_IDENTITY = "identity"
SERVICE_CONTENT = "content"
SERVICE_INFERENCE_GATEWAY = "inference-gateway"

# The service that publishes each event type (the CloudEvent `source` names it).
EVENT_PRODUCERS: dict[EventType, str] = {
    EventType.AVATAR_CREATED: SERVICE_IDENTITY,
    EventType.AVATAR_UPDATED: SERVICE_IDENTITY,
    EventType.AVATAR_DELETED: SERVICE_IDENTITY,
    EventType.LORA_READY: SERVICE_IDENTITY,
    EventType.LORA_RETIRED: SERVICE_IDENTITY,
    EventType.GENERATION_REQUESTED: SERVICE_CONTENT,
    EventType.GENERATION_STARTED: SERVICE_INFERENCE_GATEWAY,
    EventType.GENERATION_COMPLETED: SERVICE_INFERENCE_GATEWAY,
    EventType.GENERATION_FAILED: SERVICE_INFERENCE_GATEWAY,
    EventType.GENERATION_CANCELED: SERVICE_CONTENT,
}

# Queue base names: one queue per consumer group, `<service>.<purpose>`.
GATEWAY_GENERATION_REQUESTED = "inference-gateway.generation-requested"
GATEWAY_GENERATION_CANCELED = "inference-gateway.generation-canceled"
CONTENT_GENERATION_RESULTS = "content.generation-results"
CONTENT_IDENTITY_EVENTS = "content.identity-events"

_BINDINGS: dict[str, tuple[EventType, ...]] = {
    GATEWAY_GENERATION_REQUESTED: (EventType.GENERATION_REQUESTED,),
    # Its own queue, so a cancel never waits behind requests (prefetch 1) for a consumer slot.
    GATEWAY_GENERATION_CANCELED: (EventType.GENERATION_CANCELED,),
    CONTENT_GENERATION_RESULTS: (
        EventType.GENERATION_STARTED,
        EventType.GENERATION_COMPLETED,
        EventType.GENERATION_FAILED,
    ),
    CONTENT_IDENTITY_EVENTS: (
        EventType.AVATAR_CREATED,
        EventType.AVATAR_UPDATED,
        EventType.AVATAR_DELETED,
        EventType.LORA_READY,
        EventType.LORA_RETIRED,
    ),
}


def routing_key(event_type: EventType) -> str:
    """The routing key of an event on the events exchange: its type string."""
    return event_type.value


def event_source(service: str) -> str:
    """The CloudEvent `source` attribute of a service."""
    return f"/vixenbliss/{service}"


@dataclass(frozen=True)
class QueueSpec:
    """One consumer queue: its name, the routing keys bound to it, and its dead-letter queue."""

    base_name: str
    name: str
    routing_keys: tuple[str, ...]
    delivery_limit: int = DELIVERY_LIMIT

    @property
    def dlq_name(self) -> str:
        """The queue that receives what this queue dead-letters."""
        return self.name + DLQ_SUFFIX

    @property
    def dead_letter_routing_key(self) -> str:
        # Each queue dead-letters under its own name, so its DLQ gets only its messages even when
        # several queues are bound to the same event type.
        return self.name


@dataclass(frozen=True)
class Topology:
    """All broker names of one deployment (or of one test run, when prefixed)."""

    prefix: str
    events_exchange: str
    dead_letter_exchange: str
    queues: tuple[QueueSpec, ...]

    def queue(self, base_name: str) -> QueueSpec:
        """The queue whose unprefixed name is `base_name`."""
        for spec in self.queues:
            if spec.base_name == base_name:
                return spec
        raise KeyError(f"no queue named {base_name!r} in the topology")


def topology(prefix: str = "", delivery_limit: int = DELIVERY_LIMIT) -> Topology:
    """Every exchange and queue name, each prefixed with `prefix.` when a prefix is given."""

    def name(base: str) -> str:
        return f"{prefix}.{base}" if prefix else base

    return Topology(
        prefix=prefix,
        events_exchange=name(EVENTS_EXCHANGE),
        dead_letter_exchange=name(DEAD_LETTER_EXCHANGE),
        queues=tuple(
            QueueSpec(
                base_name=base,
                name=name(base),
                routing_keys=tuple(routing_key(t) for t in types),
                delivery_limit=delivery_limit,
            )
            for base, types in _BINDINGS.items()
        ),
    )
