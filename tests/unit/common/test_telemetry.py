"""Tracing set-up from the OTEL_* variables, and the trace ids in JSON log lines."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from logsafe.logs import JsonFormatter, Redaction, generation_context
from services.common.observability import telemetry

ENDPOINT = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, HttpExporter),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, HttpExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, HttpExporter),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, GrpcExporter),
        ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
    ],
)
def test_the_exporter_is_what_the_variables_ask_for_and_none_when_unset(
    env: dict[str, str], expected: type | None
) -> None:
    exporter = telemetry.exporter_from_environment(env)
    try:
        assert (type(exporter) if exporter is not None else None) is expected
    finally:
        if exporter is not None:
            exporter.shutdown()


def test_an_unknown_exporter_is_named_in_a_warning_and_nothing_is_exported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.common.observability.telemetry"):
        assert telemetry.exporter_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"}) is None
    assert "OTEL_TRACES_EXPORTER=zipkin is not supported" in caplog.text


def test_helpers_are_inert_until_tracing_is_configured() -> None:
    assert not telemetry.tracing_enabled()
    with telemetry.producer_span("generation.started", None) as headers:
        assert headers == {}
    assert telemetry.current_trace_headers() == {}


SAMPLED_PARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
UNSAMPLED_PARENT = "00-" + "c" * 32 + "-" + "d" * 16 + "-00"


def sampled(traceparent: str) -> bool:
    return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)


def test_with_nothing_to_export_spans_are_not_recorded_but_the_context_travels() -> None:
    recorded = InMemorySpanExporter()
    provider = TracerProvider(sampler=telemetry.sampler_for({}, exporting=False))
    provider.add_span_processor(SimpleSpanProcessor(recorded))  # what an exporter would have seen
    with telemetry.tracing_to(provider):
        with telemetry.producer_span("generation.started", None) as headers:
            new_root = headers["traceparent"]
        with telemetry.producer_span("generation.started", {"traceparent": UNSAMPLED_PARENT}) as headers:
            kept_unsampled = headers["traceparent"]
        with telemetry.producer_span("generation.started", {"traceparent": SAMPLED_PARENT}) as headers:
            kept_sampled = headers["traceparent"]
    assert new_root.split("-")[1] != "0" * 32 and not sampled(new_root)
    assert kept_unsampled.split("-")[1] == "c" * 32 and not sampled(kept_unsampled)
    # A caller that samples is honoured: its span is recorded and the decision passed on.
    assert kept_sampled.split("-")[1] == "a" * 32 and sampled(kept_sampled)
    assert [span.context.trace_id for span in recorded.get_finished_spans()] == [int("a" * 32, 16)]


@pytest.mark.parametrize(("env", "exporting"), [({}, True), ({"OTEL_TRACES_SAMPLER": "always_on"}, False)])
def test_an_exporter_or_a_sampler_variable_leaves_the_choice_to_the_sdk(env: dict[str, str], exporting: bool) -> None:
    assert telemetry.sampler_for(env, exporting=exporting) is None


def test_spans_to_an_unreachable_collector_do_not_get_in_the_way() -> None:
    # The batch processor exports from its own thread: making and ending spans never waits for the collector.
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint=f"{ENDPOINT}/v1/traces", timeout=1)))
    with telemetry.tracing_to(provider):
        for _ in range(50):
            with telemetry.producer_span("generation.started", None) as headers:
                assert headers["traceparent"].startswith("00-")
    provider.shutdown()


def test_a_json_line_logged_in_a_span_carries_its_trace_and_span_ids_the_generation_and_the_service() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redaction(), service="vixenbliss-content"))
    logger = logging.getLogger("tests.telemetry.json")
    logger.addHandler(handler)
    logger.propagate = False
    provider = TracerProvider()
    try:
        logger.warning("outside")
        with provider.get_tracer("test").start_as_current_span("inside") as span, generation_context("gen-7"):
            logger.warning("inside")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside and "generation_id" not in outside and outside["service"] == "vixenbliss-content"
    assert inside["generation_id"] == "gen-7"
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}" and inside["span_id"] == f"{context.span_id:016x}"
