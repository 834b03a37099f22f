"""Consuming one queue with manual ack: refuse what is not a real event of the queue, retry failures through the
retry stages with growing delays, dead-letter with a reason as the last resort."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)

from contracts.envelope import STRUCTURED_CONTENT_TYPE, EventEnvelope
from contracts.events import EventPayload
from contracts.topology import QueueSpec, producer_source
from logsafe.logs import generation_context, redact
from services.common.messaging.broker import DEFAULT_PUBLISH_TIMEOUT, Publisher
from services.common.messaging.events import InvalidEventError, from_message, traceparent_of
from services.common.observability import telemetry
from services.common.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)

MESSAGE_RETRIES = "vixen_message_retries"
DEAD_LETTERED = "vixen_messages_dead_lettered"


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the message is dead-lettered at once."""


class ForgedEventError(PermanentError):
    """Raised by a handler when a field of the event disagrees with what the receiver derives from ids it trusts
    (an object key, an owner): the message is dead-lettered at once as forged, and nothing of it is applied."""


# Headers a consumer sets on the copies it sends to a retry stage or to the DLQ.
RETRIES_HEADER = "x-vixen-retries"  # retry stages the message went through so far
LAST_ERROR_HEADER = "x-vixen-last-error"  # the handler's last failure, sanitised
DEATH_REASON_HEADER = "x-vixen-death-reason"  # a DeathReason: why the consumer dead-lettered it
DEATH_DETAIL_HEADER = "x-vixen-death-detail"  # the detail, sanitised
DEATH_QUEUE_HEADER = "x-vixen-death-queue"  # the consumer queue it died in
ROUTING_KEY_HEADER = "x-vixen-routing-key"  # the routing key it was first published under
PUBLISHER_HEADER = "x-vixen-publisher-user-id"  # the broker-checked user_id it was first published with
# Set by the broker on each delivery from a quorum queue; meaningless on a copy.
_BROKER_DELIVERY_HEADERS = frozenset({"x-delivery-count"})
MAX_ERROR_TEXT = 300


class DeathReason(StrEnum):
    """Why a consumer dead-lettered a message (the value of the x-vixen-death-reason header)."""

    TOO_LARGE = "too-large"
    NOT_STRUCTURED = "not-structured-cloudevent"
    INVALID_EVENT = "invalid-event"
    UNEXPECTED_TYPE = "unexpected-type"
    FORGED_SOURCE = "forged-source"
    FORGED_FIELD = "forged-field"
    PERMANENT_ERROR = "permanent-error"
    RETRIES_EXHAUSTED = "retries-exhausted"


@dataclass(frozen=True)
class ReceivedEvent:
    """An event handed to a handler, with what the delivery says about it."""

    envelope: EventEnvelope
    payload: EventPayload
    traceparent: str | None
    redelivered: bool
    # Quorum queues count earlier deliveries in x-delivery-count (absent on the first).
    delivery_count: int
    # Retry stages this event went through after failed handlings (0 on its first handling).
    attempt: int = 0


EventHandler = Callable[[ReceivedEvent], Awaitable[None]]
# Why an event's `source` cannot be trusted, given the AMQP user_id of its message (which RabbitMQ checks against
# the publishing connection's user, so that no one sets another's), or None when it can.
SourceCheck = Callable[[EventEnvelope, str | None], str | None]


def producer_check(envelope: EventEnvelope, user_id: str | None) -> str | None:
    """The default SourceCheck: the `source` must be the producer's of the event's type (contracts.topology)."""
    del user_id  # the broker's topic permissions already keep each producer to its own routing keys
    expected = producer_source(envelope.type)
    if envelope.source == expected:
        return None
    if expected is None:
        return f"{_clip(envelope.type)} from {_clip(envelope.source)}; this queue trusts no source for it"
    return f"{envelope.type} from {_clip(envelope.source)}; only {expected} publishes it"


class Consumer:
    """Consumes one queue of the topology with manual ack, retrying failures with growing delays.

    Before the handler sees a message, it must be a structured-mode CloudEvent (content type
    application/cloudevents+json) no bigger than the queue's limit, of a type bound to the queue, from the
    `source` of that type's producer: anything else is dead-lettered at once, unread by the handler.
    A handler exception other than InvalidEventError/PermanentError is retryable: a copy goes (confirmed) to
    the next retry stage, whose TTL brings it back to the queue after that stage's delay, and the original is
    acked; after the last stage it goes to the DLQ. Every message the consumer dead-letters carries the reason
    in x-vixen-death-reason. If a retry or dead-letter publish fails, the message is requeued (or rejected to
    the broker's own dead-lettering) rather than lost; the queue's delivery limit still bounds a consumer that
    dies mid-message. `source_check` replaces the producer check for a queue whose events come from several
    services (generation.submit).
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue: QueueSpec,
        handler: EventHandler,
        *,
        prefetch: int = 10,
        requeue_delay: float = 0.2,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        metrics: ServiceMetrics | None = None,
        source_check: SourceCheck = producer_check,
    ) -> None:
        self._connection = connection
        self._source_check = source_check
        # Retries and dead letters are counted by queue (and reason) when the app has metrics.
        self._metrics = metrics
        self._spec = queue
        self._queue_name = queue.name
        self._handler = handler
        self._prefetch = prefetch
        # A pause before a requeue (only when a retry publish failed) keeps a failing handler from spinning.
        self._requeue_delay = requeue_delay
        self._publish_timeout = publish_timeout
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._publisher: Publisher | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    @property
    def queue(self) -> QueueSpec:
        """The queue this consumer reads."""
        return self._spec

    @property
    def running(self) -> bool:
        """Whether the consumer is subscribed on an open channel (what a health check reports)."""
        return self._tag is not None and self._channel is not None and not self._channel.is_closed

    async def start(self) -> None:
        """Open the retry/DLQ publisher and a channel, set the prefetch, consume the (declared) queue."""
        self._publisher = await Publisher.open(
            self._connection, self._spec.retry_exchange, publish_timeout=self._publish_timeout
        )
        self._channel = await self._connection.channel()
        # Quorum queues do not support global QoS: per-consumer prefetch only.
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.get_queue(self._queue_name, ensure=True)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking messages, let the handlers in flight finish, close the channels."""
        if self._queue is not None and self._tag is not None and self._channel and not self._channel.is_closed:
            await self._queue.cancel(self._tag)
        self._tag = None
        if self._in_flight:
            # Unfinished handlers leave their messages unacked: the broker redelivers them.
            await asyncio.wait(self._in_flight, timeout=drain_timeout)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    def _refusal(self, message: AbstractIncomingMessage) -> tuple[DeathReason, str] | None:
        """Why a message must not reach the handler before reading it, or None."""
        size = len(message.body)
        if size > self._spec.max_message_bytes:
            return DeathReason.TOO_LARGE, f"{size} bytes, over the limit of {self._spec.max_message_bytes}"
        content_type = (message.content_type or "").split(";", 1)[0].strip().lower()
        if content_type != STRUCTURED_CONTENT_TYPE:
            mode = "binary mode" if any(str(k).startswith("ce-") for k in message.headers or {}) else "content type"
            return (
                DeathReason.NOT_STRUCTURED,
                f"{mode} {_clip(content_type or '<none>')}, not {STRUCTURED_CONTENT_TYPE}",
            )
        return None

    async def _process(self, message: AbstractIncomingMessage) -> None:
        refusal = self._refusal(message)
        if refusal is not None:
            await self._dead_letter(message, *refusal)
            return
        try:
            envelope, payload = from_message(message)
        except InvalidEventError as error:
            await self._dead_letter(message, DeathReason.INVALID_EVENT, str(error))
            return
        if not self._spec.accepts(envelope.type):
            await self._dead_letter(message, DeathReason.UNEXPECTED_TYPE, f"{_clip(envelope.type)} is not bound here")
            return
        untrusted = self._source_check(envelope, publisher_user_id(message))
        if untrusted is not None:
            await self._dead_letter(message, DeathReason.FORGED_SOURCE, untrusted)
            return
        retries = _int_header(message, RETRIES_HEADER)
        attributes = {"messaging.message.id": envelope.id, "cloudevents.event_subject": envelope.subject or ""}
        # Generation events have the generation id as their subject (identity's: the avatar's or the LoRA's id).
        generation_id = envelope.subject if envelope.type.startswith("generation.") else None
        with (
            telemetry.consumer_span(envelope.type, self._queue_name, message.headers, attributes),
            generation_context(generation_id),
        ):
            received = ReceivedEvent(
                envelope=envelope,
                payload=payload,
                # The handling span's context: what the handler stores or sends on continues this trace.
                traceparent=telemetry.current_trace_headers().get(telemetry.TRACEPARENT) or traceparent_of(message),
                redelivered=bool(message.redelivered),
                delivery_count=_int_header(message, "x-delivery-count"),
                attempt=retries,
            )
            await self._handle(message, envelope, received, retries)

    async def _handle(
        self, message: AbstractIncomingMessage, envelope: EventEnvelope, received: ReceivedEvent, retries: int
    ) -> None:
        try:
            await self._handler(received)
        except InvalidEventError as error:
            await self._dead_letter(message, DeathReason.INVALID_EVENT, str(error))
        except ForgedEventError as error:
            await self._dead_letter(message, DeathReason.FORGED_FIELD, str(error))
        except PermanentError as error:
            await self._dead_letter(message, DeathReason.PERMANENT_ERROR, str(error))
        except Exception as error:
            await self._retry_later(message, envelope, retries, error)
        else:
            await message.ack()

    async def _retry_later(
        self, message: AbstractIncomingMessage, envelope: EventEnvelope, retries: int, error: Exception
    ) -> None:
        cause = describe_error(error)
        stages = self._spec.retry_stages
        if retries >= len(stages):
            detail = f"failed after {retries} retries; last error: {cause}"
            await self._dead_letter(message, DeathReason.RETRIES_EXHAUSTED, detail)
            return
        stage = stages[retries]
        if self._metrics is not None:
            self._metrics.add(
                MESSAGE_RETRIES, 1, "handlings that failed and were sent to a retry stage", queue=self._queue_name
            )
        log.warning(
            "handler failed for %s %s (%s); retry %d of %d in %.1fs",
            envelope.type,
            envelope.id,
            cause,
            retries + 1,
            len(stages),
            stage.delay_seconds,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        headers = {
            **forwarded_headers(message),
            RETRIES_HEADER: retries + 1,
            LAST_ERROR_HEADER: cause,
            ROUTING_KEY_HEADER: original_routing_key(message),
        }
        keep_publisher(headers, message)
        try:
            await self._require_publisher().publish_confirmed(copy_message(message, headers), stage.name)
        except Exception:
            log.exception("could not send %s %s to %s; requeueing it", envelope.type, envelope.id, stage.name)
            if self._requeue_delay > 0:
                await asyncio.sleep(self._requeue_delay)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: DeathReason, detail: str) -> None:
        """Send a copy with the reason to the queue's DLQ (confirmed), then ack; if that fails, reject it to
        the broker's own dead-lettering (which keeps the message but not the reason)."""
        clean = _clip(redact(detail))
        if self._metrics is not None:
            self._metrics.add(
                DEAD_LETTERED, 1, "messages sent to the dead-letter queue", queue=self._queue_name, reason=reason.value
            )
        log.warning("dead-lettering message %s from %s: %s: %s", message.message_id, self._queue_name, reason, clean)
        headers = {
            **forwarded_headers(message),
            DEATH_REASON_HEADER: reason.value,
            DEATH_DETAIL_HEADER: clean,
            DEATH_QUEUE_HEADER: self._queue_name,
            ROUTING_KEY_HEADER: original_routing_key(message),
        }
        keep_publisher(headers, message)
        try:
            await self._require_publisher().publish_confirmed(
                copy_message(message, headers), self._spec.dead_letter_routing_key
            )
        except Exception:
            log.exception("could not send message %s to %s; rejecting it", message.message_id, self._spec.dlq_name)
            await message.reject(requeue=False)
            return
        await message.ack()

    def _require_publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("the consumer is not started")
        return self._publisher


def describe_error(error: BaseException) -> str:
    """A handler failure as one short line for a header or a log, with secrets and signatures redacted."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return _clip(redact(" ".join(text.split())))


def forwarded_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """A message's headers less those the broker sets on each delivery."""
    return {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_DELIVERY_HEADERS}


def publisher_user_id(message: AbstractIncomingMessage) -> str | None:
    """The broker user that published the message, as the broker vouched for it: the user_id property of a
    delivery from an exchange (RabbitMQ refuses a user_id other than the connection's), or, for a copy that came
    back through the default exchange (from a retry stage, or replayed by the operator: no service may publish
    there), the header the consumer kept it in. None when it was published without one."""
    if message.exchange:
        return message.user_id or None
    kept = (message.headers or {}).get(PUBLISHER_HEADER)
    return _text(kept) if kept else None


def keep_publisher(headers: dict[str, Any], message: AbstractIncomingMessage) -> None:
    """Put the publisher's user in the headers of a copy (the copy is published by this consumer, under its own
    user): only what `publisher_user_id` vouches for, never a header the publisher set itself."""
    headers.pop(PUBLISHER_HEADER, None)
    user = publisher_user_id(message)
    if user is not None:
        headers[PUBLISHER_HEADER] = user


def original_routing_key(message: AbstractIncomingMessage) -> str:
    """The routing key the message was first published under (a copy sent to a retry stage keeps it in a
    header: back from the stage, the delivery's routing key is the queue's name)."""
    kept = (message.headers or {}).get(ROUTING_KEY_HEADER)
    if kept:
        return _text(kept)
    return message.routing_key or ""


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy of a received message (body and properties) with `headers`."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def _int_header(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name, 0)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
