"""Tracing for every service process: the tracer provider from the OTEL_* variables, the maintained
instrumentations, and W3C trace context carried by hand where they cannot reach (outbox rows, AMQP messages).

`configure_tracing` runs once per process, at start (`entrypoint.serve`). Until it has run (an app built in a
test, a command-line tool) every helper here is inert: nothing is instrumented and no global state changes, so
in-process tests never leave a tracer behind. Once it has run, the trace context travels even with no exporter
(every message of a generation carries its trace id, and so do the logs), but with nothing to export to, spans
are not recorded unless the incoming context was sampled or `OTEL_TRACES_SAMPLER` asks (recording them cost a
tenth of the platform's CPU per generation: docs/benchmarks.md); an exporter is added only when
`OTEL_TRACES_EXPORTER` or an OTLP endpoint variable asks for one, and one that cannot be built is logged and
skipped: tracing is never a reason not to start, and an unreachable collector only drops spans (in the batch
processor's thread), never slows a request.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Probes and scrapes are not worth a span each.
EXCLUDED_URLS = "healthz,readyz,metrics"
_PROPAGATOR = TraceContextTextMapPropagator()
# The provider of this process once configure_tracing ran (None: tracing is off, every helper is inert).
_provider: TracerProvider | None = None


def configure_tracing(service_name: str, *, processors: tuple[SpanProcessor, ...] = ()) -> TracerProvider:
    """Install the process's tracer provider (service.name = `service_name` unless OTEL_SERVICE_NAME says
    otherwise; OTEL_RESOURCE_ATTRIBUTES added), its exporter per the OTEL_* variables, and botocore's
    instrumentation. Idempotent: a second call returns the provider already installed."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
    exporter = exporter_from_environment(os.environ)
    sampler = sampler_for(os.environ, exporting=exporter is not None or bool(processors))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _provider = provider
    _instrument_botocore(provider)
    return provider


def sampler_for(env: Mapping[str, str], *, exporting: bool) -> Sampler | None:
    """None (the SDK's choice: OTEL_TRACES_SAMPLER, else parent-based always-on) when spans go somewhere or a
    sampler is asked for; else parent-based always-off: ids are still made and passed on, nothing is recorded
    unless the caller's context was sampled (a caller's decision is kept either way)."""
    if exporting or env.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(ALWAYS_OFF)


def exporter_from_environment(env: Mapping[str, str]) -> SpanExporter | None:
    """The span exporter the variables ask for: OTEL_TRACES_EXPORTER (`otlp`, `console`, `none`), else OTLP when
    an endpoint is set; OTLP over HTTP, or gRPC with OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=grpc. None: no export."""
    chosen = (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if chosen == "none" or (chosen == "" and not endpoint):
        return None
    if chosen == "console":
        return ConsoleSpanExporter()
    if chosen not in ("", "otlp"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none): no spans exported", chosen)
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    try:
        if protocol.strip().lower() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    except Exception as error:  # a missing package or a malformed variable: run without exporting
        log.warning(
            "the OTLP span exporter could not be built (%s: %s); no spans exported", type(error).__name__, error
        )
        return None


@contextlib.contextmanager
def tracing_to(provider: TracerProvider) -> Iterator[TracerProvider]:
    """Make this module's spans with `provider` for the duration, then put back what was there (tests: the
    process's global provider is left alone, and nothing is instrumented)."""
    global _provider
    previous, _provider = _provider, provider
    try:
        yield provider
    finally:
        _provider = previous


def tracing_enabled() -> bool:
    """Whether configure_tracing ran in this process."""
    return _provider is not None


def shutdown_tracing() -> None:
    """Flush what is batched and stop exporting (at process exit; bounded by the exporter's timeout)."""
    if _provider is not None:
        _provider.shutdown()


def instrument_app(app: FastAPI) -> None:
    """A server span per request, continuing an incoming `traceparent` (probes and /metrics left out)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No span per ASGI message: an event stream sends one per heartbeat for minutes, thousands of streams at once.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )


def instrument_http_client(client: httpx.AsyncClient) -> None:
    """A client span per request of this client, and its context sent as `traceparent`."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_provider)


def instrument_database(engine: AsyncEngine) -> None:
    """A span per statement of the service's one engine (the instrumentor serves one engine per process)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # The instrumentation (0.66b2) still declares sqlalchemy < 2.1 and, checked against that, refuses 2.1.x
        # with a log line and no span at all; its engine hooks work on 2.1.9 (tests/e2e/test_tracing_e2e.py).
        instrumentor.instrument(engine=engine.sync_engine, tracer_provider=_provider, skip_dep_check=True)


def _instrument_botocore(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    instrumentor = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def current_trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate` when set) of the current span; empty when there is none to carry."""
    carrier: dict[str, str] = {}
    if _provider is not None:
        _PROPAGATOR.inject(carrier)
    return carrier


def context_from(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The trace context a set of headers carries (W3C traceparent/tracestate); an empty context if none."""
    carrier = {
        key: value.decode() if isinstance(value, bytes) else str(value)
        for key, value in (headers or {}).items()
        if key in (TRACEPARENT, TRACESTATE) and value is not None
    }
    return _PROPAGATOR.extract(carrier)


def _tracer() -> trace.Tracer:
    return trace.get_tracer("vixenbliss", tracer_provider=_provider or trace.NoOpTracerProvider())


@contextlib.contextmanager
def producer_span(routing_key: str, stored: Mapping[str, Any] | None) -> Iterator[dict[str, str]]:
    """A PRODUCER span for one message, the child of the context stored with it (an outbox row's); yields the
    headers to send, so that the consumer's span becomes the child of this one."""
    if _provider is None:
        yield {}
        return
    with _tracer().start_as_current_span(
        f"publish {routing_key}",
        context=context_from(stored),
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "rabbitmq", "messaging.destination.name": routing_key},
    ):
        yield current_trace_headers()


@contextlib.contextmanager
def consumer_span(
    routing_key: str, queue: str, headers: Mapping[str, Any] | None, attributes: Mapping[str, str]
) -> Iterator[Span]:
    """A CONSUMER span around the handling of one message: the child of its producer's span (the message's
    `traceparent`), also linked to it, as the messaging conventions ask."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    parent = context_from(headers)
    producer = trace.get_current_span(parent).get_span_context()
    links = [Link(producer)] if producer.is_valid else []
    with _tracer().start_as_current_span(
        f"process {routing_key}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.destination.name": routing_key,
            "messaging.rabbitmq.queue": queue,
            **attributes,
        },
    ) as span:
        yield span


@contextlib.contextmanager
def continued_span(name: str, traceparent: str | None, attributes: Mapping[str, str]) -> Iterator[Span]:
    """An INTERNAL span continuing a stored trace context (a job run later, by another process maybe)."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    context = context_from({TRACEPARENT: traceparent} if traceparent else None)
    with _tracer().start_as_current_span(name, context=context, attributes=dict(attributes)) as span:
        yield span


def mark_error(span: Span, code: str, message: str) -> None:
    """Record a failure's error code on a span (no exception text: it may carry URLs)."""
    span.set_attribute("vixen.error_code", code)
    span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:200]))
