"""The worker's tracing: the spans of one request laid out from its timings, and the exporter OTEL_* selects."""

import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from contracts.errors import WorkerErrorCode
from contracts.worker import ModelInfo, Timings, WorkerError, WorkerSuccess
from gpu.serve.telemetry import record_request, span_exporter_from_env

MS = 1_000_000
ARRIVED = 1_700_000_000_000 * MS
CALLER = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def success(timings: Timings) -> WorkerSuccess:
    info = ModelInfo(base_model="tiny", lora_applied=timings.lora_source != "none", lora_scale=1.0)
    return WorkerSuccess(image_base64="", generation_time_seconds=0.1, model_info=info, timings=timings)


def recorded(outcome: WorkerSuccess | WorkerError, ended_ms: float) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    record_request(
        provider.get_tracer("test"),
        outcome,
        arrived_ns=ARRIVED,
        ended_ns=ARRIVED + round(ended_ms * MS),
        request_id="gen-1",
        context=trace.set_span_in_context(NonRecordingSpan(CALLER)),
    )
    return list(exporter.get_finished_spans())


def by_start(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return sorted(spans, key=lambda span: span.start_time or 0)


def test_a_success_with_a_lora_is_one_span_with_its_phases_end_to_end() -> None:
    timings = Timings(
        download_ms=30, load_ms=20, denoise_ms=300, decode_encode_ms=40, restore_ms=10, total_ms=400.5,
        lora_source="download",
    )  # fmt: skip
    spans = recorded(success(timings), ended_ms=500.5)  # 100 ms queued before the engine began
    (parent,) = [span for span in spans if span.name == "worker.generate"]
    assert parent.context is not None and parent.parent is not None
    assert (parent.context.trace_id, parent.parent.span_id) == (CALLER.trace_id, CALLER.span_id)
    assert (parent.start_time, parent.end_time) == (ARRIVED, ARRIVED + 500_500_000)
    assert dict(parent.attributes or {}) == {"vixen.generation_id": "gen-1", "vixen.lora_source": "download"}
    assert parent.status.status_code == StatusCode.UNSET

    children = by_start([span for span in spans if span is not parent])
    assert [span.name for span in children] == [
        "worker.queue_wait",
        "worker.download",
        "worker.load",
        "worker.denoise",
        "worker.decode_encode",
        "worker.restore",
    ]
    assert all(child.parent is not None and child.parent.span_id == parent.context.span_id for child in children)
    durations_ms = [((child.end_time or 0) - (child.start_time or 0)) / MS for child in children]
    assert durations_ms == [100, 30, 20, 300, 40, 10]
    assert children[0].start_time == ARRIVED
    assert all(a.end_time == b.start_time for a, b in itertools.pairwise(children))


def test_a_success_without_a_lora_has_no_download_load_or_restore() -> None:
    timings = Timings(denoise_ms=80, decode_encode_ms=15, total_ms=100)
    spans = recorded(success(timings), ended_ms=100)
    names = [span.name for span in by_start(spans) if span.name != "worker.generate"]
    assert names == ["worker.queue_wait", "worker.denoise", "worker.decode_encode"]
    (queue_wait,) = [span for span in spans if span.name == "worker.queue_wait"]
    assert queue_wait.start_time == queue_wait.end_time  # nothing queued


def test_children_never_outlast_the_request_when_rounded_timings_add_up_past_it() -> None:
    timings = Timings(denoise_ms=90, decode_encode_ms=20, total_ms=100)
    spans = recorded(success(timings), ended_ms=100)
    assert max(span.end_time or 0 for span in spans) == ARRIVED + 100 * MS


def test_an_error_is_one_span_with_status_error_and_its_code() -> None:
    error = WorkerError(error="LoRA file is not a LoRA", error_code=WorkerErrorCode.LORA_LOAD_FAILED, request_id="x")
    (span,) = recorded(error, ended_ms=50)
    assert span.name == "worker.generate"
    assert dict(span.attributes or {}) == {"vixen.generation_id": "gen-1", "vixen.error_code": "LORA_LOAD_FAILED"}
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "LoRA file is not a LoRA"


# --- the exporter OTEL_* selects ---------------------------------------------------------------------


def test_no_otel_variables_select_no_exporter() -> None:
    assert span_exporter_from_env({}) is None
    assert span_exporter_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_an_otlp_endpoint_or_otlp_selects_the_http_exporter(environ: dict[str, str]) -> None:
    exporter = span_exporter_from_env(environ)
    assert isinstance(exporter, OTLPSpanExporter)
    exporter.shutdown()  # type: ignore[no-untyped-call]


def test_console_and_explicit_none_are_honoured() -> None:
    assert isinstance(span_exporter_from_env({"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter)
    # An explicit "none" wins over an endpoint left in the environment.
    assert span_exporter_from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) is None


def test_an_exporter_that_cannot_be_built_warns_once_and_start_up_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with caplog.at_level(logging.WARNING, logger="gpu.serve.telemetry"):
        assert span_exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is None
        assert span_exporter_from_env({"OTEL_TRACES_EXPORTER": "zipkin"}) is None
    assert [record.levelno for record in caplog.records] == [logging.WARNING, logging.WARNING]


# --- configure_tracing sets the global provider: checked in a fresh process ---------------------------

PROBE = """
import json
from opentelemetry import trace
from gpu.serve.telemetry import configure_tracing
provider = configure_tracing()
processors = provider._active_span_processor._span_processors
print(json.dumps({
    "global": trace.get_tracer_provider() is provider,
    "processors": [type(p).__name__ for p in processors],
    "exporters": [type(p.span_exporter).__name__ for p in processors if hasattr(p, "span_exporter")],
    "resource": {
        k: str(v) for k, v in provider.resource.attributes.items() if k in ("service.name", "deployment.environment")
    },
}))
"""


def configure_in_subprocess(**otel: str) -> dict[str, object]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**environ, **otel}, capture_output=True, text=True, check=True, timeout=60
    )
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_configure_tracing_without_otel_variables_sets_the_provider_and_adds_no_exporter() -> None:
    answer = configure_in_subprocess()
    assert answer["global"] is True
    assert answer["processors"] == []
    assert answer["resource"] == {"service.name": "vixenbliss-worker"}


def test_configure_tracing_honours_the_endpoint_service_name_and_resource_attributes() -> None:
    answer = configure_in_subprocess(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_SERVICE_NAME="worker-eu",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,service.name=ignored",
    )
    assert answer["processors"] == ["BatchSpanProcessor"]
    assert answer["exporters"] == ["OTLPSpanExporter"]
    assert answer["resource"] == {"service.name": "worker-eu", "deployment.environment": "test"}
