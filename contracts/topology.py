"""RabbitMQ names: exchanges, routing keys, queues and their bindings, optionally prefixed per test run."""

import re
from dataclasses import dataclass

from contracts.events import EventType

EVENTS_EXCHANGE = "vixen.events"
# Where the broker dead-letters (direct, keyed by queue name); nobody publishes to it.
DEAD_LETTER_EXCHANGE = "vixen.dlx"
# Where a consumer sends a failed message to a retry stage or its copy to the DLQ (topic, keyed by the stage's or
# the queue's name), so that topic permissions can keep each service to its own queues' keys.
RETRY_EXCHANGE = "vixen.retries"
# Deliveries per message before the broker dead-letters it (quorum queue x-delivery-limit): the backstop for a
# consumer that dies mid-message again and again; a handler failure goes through the retry queues instead.
DELIVERY_LIMIT = 5
DLQ_SUFFIX = ".dlq"
RETRY_SUFFIX = ".retry-"
# Delays of the retry stages a failed message goes through before the DLQ: 201 s in all, so a dependency
# (database, object storage) that is out for 60 s loses nothing (attempts at 0, 1, 6, 21, 81 and 201 s).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0, 120.0)
# A consumer dead-letters a bigger message unread (no event of ours comes near it).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

SERVICE_IDENTITY = "identity"
SERVICE_CONTENT = "content"
SERVICE_INFERENCE_GATEWAY = "inference-gateway"
# The role of every service named in VIXEN_SUBMIT_SERVICES: each publishes generation.submit under its own name.
SERVICE_REQUESTER = "requester"
# Names a requesting service may not take: ours, and the other broker users of services.tools.broker_definitions.
RESERVED_SERVICE_NAMES = frozenset(
    {SERVICE_IDENTITY, SERVICE_CONTENT, SERVICE_INFERENCE_GATEWAY, SERVICE_REQUESTER, "autoscaler", "admin"}
)
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")

# The service that publishes each event type (the CloudEvent `source` names it; for generation.submit, the role of
# the requesting services, each with a source of its own).
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
    EventType.GENERATION_SUBMIT: SERVICE_REQUESTER,
    EventType.GENERATION_ACCEPTED: SERVICE_CONTENT,
    EventType.GENERATION_REJECTED: SERVICE_CONTENT,
    EventType.GENERATION_FINISHED: SERVICE_CONTENT,
}
# Content's answers to one requesting service: each published under `<type>.<requester>`, so that a service's queue
# is bound to its own answers only.
REPLY_EVENTS: tuple[EventType, ...] = (
    EventType.GENERATION_ACCEPTED,
    EventType.GENERATION_REJECTED,
    EventType.GENERATION_FINISHED,
)

# Queue base names: one queue per consumer group, `<service>.<purpose>`.
GATEWAY_GENERATION_REQUESTED = "inference-gateway.generation-requested"
GATEWAY_GENERATION_CANCELED = "inference-gateway.generation-canceled"
CONTENT_GENERATION_RESULTS = "content.generation-results"
CONTENT_IDENTITY_EVENTS = "content.identity-events"
# Only in a topology with requesting services (VIXEN_SUBMIT_SERVICES): their commands, and one reply queue each.
CONTENT_GENERATION_SUBMITS = "content.generation-submits"
REPLY_QUEUE_PURPOSE = "generation-replies"

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


def reply_routing_key(event_type: EventType, requester: str) -> str:
    """The routing key of content's answer to one requesting service: `generation.rejected.scheduler`."""
    if event_type not in REPLY_EVENTS:
        raise ValueError(f"{event_type} is not an answer to a requesting service")
    return f"{event_type.value}.{requester}"


def reply_queue_base_name(requester: str) -> str:
    """The queue of one requesting service's answers: `<requester>.generation-replies`."""
    return f"{requester}.{REPLY_QUEUE_PURPOSE}"


def requester_name_problem(name: str) -> str | None:
    """Why `name` cannot be a requesting service's name, or None: lowercase letters, digits and `-` (a routing-key
    word and part of a broker user's name), a letter first, at most 63 characters, none of ours."""
    if not _SERVICE_NAME.fullmatch(name):
        return f"{name[:80]!r} is not a service name (a lowercase letter, then up to 62 of a-z, 0-9 and -)"
    if name in RESERVED_SERVICE_NAMES:
        return f"{name!r} is the name of one of the platform's own roles"
    return None


def event_source(service: str) -> str:
    """The CloudEvent `source` attribute of a service."""
    return f"/vixenbliss/{service}"


def source_service(source: str) -> str | None:
    """The service a `source` attribute names (`/vixenbliss/scheduler` → `scheduler`), or None for another shape."""
    prefix = event_source("")
    name = source.removeprefix(prefix) if source.startswith(prefix) else ""
    return name if _SERVICE_NAME.fullmatch(name) else None


def producer_source(event_type: str) -> str | None:
    """The only `source` an event of `event_type` may carry (its producer's), or None for an unknown type and for
    generation.submit, which each requesting service publishes under its own source (its consumer decides whom it
    trusts)."""
    try:
        producer = EVENT_PRODUCERS[EventType(event_type)]
    except ValueError:
        return None
    return None if producer == SERVICE_REQUESTER else event_source(producer)


@dataclass(frozen=True)
class RetryStage:
    """One retry queue: a failed message waits `delay_seconds` there (its TTL), then returns to its queue."""

    name: str
    delay_seconds: float

    @property
    def ttl_ms(self) -> int:
        """The queue's x-message-ttl."""
        return max(1, round(self.delay_seconds * 1000))


def retry_stage_name(queue_name: str, delay_seconds: float) -> str:
    """`<queue>.retry-5s` (or `-200ms`): the delay is in the name, so a changed delay is a new queue, never a
    redeclaration that conflicts with the old TTL."""
    ms = max(1, round(delay_seconds * 1000))
    label = f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
    return f"{queue_name}{RETRY_SUFFIX}{label}"


@dataclass(frozen=True)
class QueueSpec:
    """One consumer queue: its name, the routing keys bound to it, its retry stages and its dead-letter queue."""

    base_name: str
    name: str
    routing_keys: tuple[str, ...]
    delivery_limit: int = DELIVERY_LIMIT
    # The event types it takes, when they are not its routing keys (a reply queue's keys end with its requester).
    event_types: tuple[str, ...] = ()
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Where the broker dead-letters this queue's messages (the topology's, prefixed).
    dead_letter_exchange: str = DEAD_LETTER_EXCHANGE
    # Where its consumer sends a message to a retry stage or to the DLQ (the topology's, prefixed).
    retry_exchange: str = RETRY_EXCHANGE

    @property
    def dlq_name(self) -> str:
        """The queue that receives what this queue dead-letters."""
        return self.name + DLQ_SUFFIX

    @property
    def retry_stages(self) -> tuple[RetryStage, ...]:
        """The retry queues in the order a failing message goes through them (delays growing)."""
        return tuple(RetryStage(retry_stage_name(self.name, d), d) for d in self.retry_delays)

    @property
    def unique_retry_stages(self) -> tuple[RetryStage, ...]:
        """The stages with a queue of their own (two equal delays share one queue), in order."""
        return tuple({stage.name: stage for stage in self.retry_stages}.values())

    @property
    def retry_queue_names(self) -> tuple[str, ...]:
        """The distinct retry queue names (two equal delays share one queue)."""
        return tuple(stage.name for stage in self.unique_retry_stages)

    def accepts(self, event_type: str) -> bool:
        """Whether events of `event_type` are bound to this queue."""
        return event_type in (self.event_types or self.routing_keys)

    def accepted_source(self, event_type: str) -> str | None:
        """The `source` this queue accepts for `event_type`; None when the type is not bound to this queue (or has
        no single producer)."""
        return producer_source(event_type) if self.accepts(event_type) else None

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
    retry_exchange: str = RETRY_EXCHANGE
    # The services that may publish generation.submit (VIXEN_SUBMIT_SERVICES), each with a reply queue.
    requesters: tuple[str, ...] = ()

    def queues_of(self, service: str) -> tuple[QueueSpec, ...]:
        """The queues a service consumes (named `<service>.<purpose>`)."""
        return tuple(spec for spec in self.queues if spec.base_name.startswith(f"{service}."))

    def queue(self, base_name: str) -> QueueSpec:
        """The queue whose unprefixed name is `base_name`."""
        for spec in self.queues:
            if spec.base_name == base_name:
                return spec
        raise KeyError(f"no queue named {base_name!r} in the topology")

    def queue_for(self, any_name: str) -> QueueSpec:
        """The queue named by its base name, its full name or its DLQ's name (what an operator types)."""
        for spec in self.queues:
            if any_name in (spec.base_name, spec.name, spec.dlq_name, spec.base_name + DLQ_SUFFIX):
                return spec
        raise KeyError(f"no queue or dead-letter queue named {any_name!r} in the topology")

    def published_keys(self, service: str) -> tuple[str, ...]:
        """Every routing key `service` publishes on the events exchange: its events' types (content's answers: one
        key per requesting service); for a requesting service, generation.submit."""
        role = SERVICE_REQUESTER if service in self.requesters else service
        keys: list[str] = []
        for event_type, producer in EVENT_PRODUCERS.items():
            if producer != role:
                continue
            if event_type in REPLY_EVENTS:
                keys += [reply_routing_key(event_type, requester) for requester in self.requesters]
            else:
                keys.append(routing_key(event_type))
        return tuple(keys)


def topology(
    prefix: str = "",
    delivery_limit: int = DELIVERY_LIMIT,
    *,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    requesters: tuple[str, ...] = (),
) -> Topology:
    """Every exchange and queue name, each prefixed with `prefix.` when a prefix is given.

    `retry_delays` (seconds, growing) name and time the retry stages of every queue; `max_message_bytes` is the
    largest message a consumer reads. `requesters` (VIXEN_SUBMIT_SERVICES) add content's queue of generation.submit
    and one reply queue per requesting service; without any, neither exists.
    """
    if any(delay <= 0 for delay in retry_delays):
        raise ValueError("retry delays must be positive")
    if max_message_bytes <= 0:
        raise ValueError("max_message_bytes must be positive")
    for requester in requesters:
        problem = requester_name_problem(requester)
        if problem is not None:
            raise ValueError(f"requesting service {problem}")
    requesters = tuple(dict.fromkeys(requesters))

    def name(base: str) -> str:
        return f"{prefix}.{base}" if prefix else base

    # (base name, routing keys, event types when they differ from the keys)
    bound: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
        (base, tuple(routing_key(t) for t in types), ()) for base, types in _BINDINGS.items()
    ]
    if requesters:
        bound.append((CONTENT_GENERATION_SUBMITS, (routing_key(EventType.GENERATION_SUBMIT),), ()))
    for requester in requesters:
        keys = tuple(reply_routing_key(t, requester) for t in REPLY_EVENTS)
        bound.append((reply_queue_base_name(requester), keys, tuple(routing_key(t) for t in REPLY_EVENTS)))
    return Topology(
        prefix=prefix,
        events_exchange=name(EVENTS_EXCHANGE),
        dead_letter_exchange=name(DEAD_LETTER_EXCHANGE),
        retry_exchange=name(RETRY_EXCHANGE),
        queues=tuple(
            QueueSpec(
                base_name=base,
                name=name(base),
                routing_keys=keys,
                delivery_limit=delivery_limit,
                event_types=types,
                retry_delays=tuple(retry_delays),
                max_message_bytes=max_message_bytes,
                dead_letter_exchange=name(DEAD_LETTER_EXCHANGE),
                retry_exchange=name(RETRY_EXCHANGE),
            )
            for base, keys, types in bound
        ),
        requesters=requesters,
    )
