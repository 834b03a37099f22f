"""Trace context by hand through the outbox and RabbitMQ (real broker, SQLite outbox): staged in a span, published
in a child PRODUCER span, handled in a CONSUMER span that is the producer's child and links to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contracts.events import GenerationStarted
from contracts.topology import CONTENT_GENERATION_RESULTS, SERVICE_INFERENCE_GATEWAY, Topology, event_source
from services.common.messaging.broker import Publisher
from services.common.messaging.consumer import Consumer, ReceivedEvent
from services.common.messaging.events import new_event
from services.common.messaging.outbox import OutboxRelay, add_to_outbox, make_outbox_table
from services.common.observability import telemetry
from services.common.persistence.db import create_all, create_engine, create_session_factory, make_metadata


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_a_staged_event_is_published_and_handled_in_the_trace_it_was_staged_in(
    amqp: AbstractRobustConnection, topo: Topology, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metadata = make_metadata()
    outbox = make_outbox_table(metadata, "trace_outbox")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await create_all(engine, metadata)
    sessions = create_session_factory(engine)
    received: list[tuple[ReceivedEvent, str]] = []
    handled = asyncio.Event()

    async def handler(event: ReceivedEvent) -> None:
        received.append((event, telemetry.current_trace_headers()["traceparent"]))
        handled.set()

    started = GenerationStarted(generation_id="gen-traced", attempt=1, worker_mode="sync")
    envelope = new_event(started, source=event_source(SERVICE_INFERENCE_GATEWAY), subject="gen-traced")
    publisher = await Publisher.open(amqp, topo.events_exchange)
    consumer = Consumer(amqp, topo.queue(CONTENT_GENERATION_RESULTS), handler)
    try:
        with telemetry.tracing_to(provider):
            with provider.get_tracer("test").start_as_current_span("submit"):
                async with sessions() as session, session.begin():
                    await add_to_outbox(session, outbox, envelope)
            await consumer.start()
            assert await OutboxRelay(sessions, outbox, publisher).run_once() == 1
            await asyncio.wait_for(handled.wait(), 15)
    finally:
        await consumer.stop()
        await publisher.close()
        await engine.dispose()

    spans = exporter.get_finished_spans()
    submit = by_name(spans, "submit")
    publish = by_name(spans, "publish generation.started")
    process = by_name(spans, "process generation.started")
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert publish.parent is not None and publish.parent.span_id == submit.context.span_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    assert {s.context.trace_id for s in (submit, publish, process)} == {submit.context.trace_id}
    assert process.attributes is not None and process.attributes["messaging.message.id"] == envelope.id
    event, current = received[0]
    # The handler sees the handling span's context, so whatever it stores or sends continues the trace.
    assert event.traceparent == current and f"-{process.context.span_id:016x}-" in current


async def test_without_tracing_configured_nothing_is_added(
    amqp: AbstractRobustConnection, topo: Topology, tmp_path: Path
) -> None:
    metadata = make_metadata()
    outbox = make_outbox_table(metadata, "plain_outbox")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await create_all(engine, metadata)
    sessions = create_session_factory(engine)
    started = GenerationStarted(generation_id="gen-plain", attempt=1, worker_mode="sync")
    try:
        async with sessions() as session, session.begin():
            await add_to_outbox(session, outbox, new_event(started, source="/x", subject="gen-plain"))
        async with sessions() as session:
            row = (await session.execute(outbox.select())).mappings().one()
    finally:
        await engine.dispose()

    assert row["traceparent"] is None and "traceparent" not in row["headers"]
    assert not telemetry.tracing_enabled()
