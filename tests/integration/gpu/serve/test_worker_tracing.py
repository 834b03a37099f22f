"""The worker's spans on the tiny model: a caller's `traceparent` is continued by the local server (sync and
async) and by the Modal class, and an unreachable collector never holds a request."""

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gpu.serve.bootstrap import build_engine
from gpu.serve.server import LocalWorkerSettings, create_app
from gpu.serve.telemetry import span_exporter_from_env

SMALL = {"prompt": "a portrait of sks person", "width": 64, "height": 64, "steps": 2, "seed": 1}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
PHASES = ["worker.queue_wait", "worker.download", "worker.load", "worker.denoise", "worker.decode_encode"]


class Traced:
    """An in-memory span exporter behind its own provider (the global provider is never touched)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name: str, timeout: float = 10.0) -> list[ReadableSpan]:
        """The finished spans, once one called `name` is among them (a job's are recorded as it ends)."""
        deadline = time.monotonic() + timeout
        while not any(span.name == name for span in self.exporter.get_finished_spans()):
            assert time.monotonic() < deadline, f"no {name} span"
            time.sleep(0.01)
        return list(self.exporter.get_finished_spans())


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [span for span in spans if span.name == name]
    return span


def assert_worker_spans_under(spans: list[ReadableSpan], parent_span_id: int, lora: bool) -> None:
    generate = one(spans, "worker.generate")
    assert generate.context is not None and generate.parent is not None
    assert format(generate.context.trace_id, "032x") == TRACE_ID
    assert generate.parent.span_id == parent_span_id
    assert generate.attributes is not None and generate.attributes["vixen.generation_id"] == "gen-42"
    children = sorted(
        (span for span in spans if span.parent is not None and span.parent.span_id == generate.context.span_id),
        key=lambda span: span.start_time or 0,
    )
    expected = [*PHASES, "worker.restore"] if lora else ["worker.queue_wait", "worker.denoise", "worker.decode_encode"]
    assert [span.name for span in children] == expected
    assert all(span.context is not None and format(span.context.trace_id, "032x") == TRACE_ID for span in children)
    assert (generate.start_time or 0) <= (children[0].start_time or 0)
    assert (children[-1].end_time or 0) <= (generate.end_time or 0)


@pytest.fixture
def traced() -> Traced:
    return Traced()


@pytest.fixture
def client(tiny_model_dir: Path, traced: Traced) -> Iterator[TestClient]:
    settings = LocalWorkerSettings(MODEL_DIR=tiny_model_dir, WORKER_DEVICE="cpu")
    app = create_app(settings, lambda: build_engine(settings), tracer_provider=traced.provider)
    with TestClient(app) as test_client:
        yield test_client
    traced.provider.shutdown()


def test_sync_generate_continues_the_callers_trace_under_the_server_span(
    client: TestClient, traced: Traced, file_server: Any, lora_files: dict[str, Path]
) -> None:
    url = file_server.add("/a.safetensors", lora_files["a"].read_bytes())
    body = {**SMALL, "lora_url": url, "request_id": "gen-42"}
    response = client.post("/generate", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200

    spans = traced.spans("worker.generate")
    server = one(spans, "POST /generate")
    assert server.kind == SpanKind.SERVER and server.context is not None and server.parent is not None
    assert format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    assert_worker_spans_under(spans, server.context.span_id, lora=True)
    assert one(spans, "worker.generate").attributes == {
        "vixen.generation_id": "gen-42",
        "vixen.lora_source": "download",
    }


def test_an_async_job_records_its_spans_under_the_submits_server_span(client: TestClient, traced: Traced) -> None:
    submitted = client.post("/jobs", json={**SMALL, "request_id": "gen-42"}, headers={"traceparent": TRACEPARENT})
    assert submitted.status_code == 202
    call_id = submitted.json()["call_id"]
    assert client.get(f"/jobs/{call_id}", params={"wait": 30}).status_code == 200

    spans = traced.spans("worker.generate")
    server = one(spans, "POST /jobs")
    assert server.context is not None and server.parent is not None
    assert format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    assert_worker_spans_under(spans, server.context.span_id, lora=False)
    # The poll is a span of its own, not the job's parent.
    poll = one(spans, "GET /jobs/{call_id}")
    assert poll.context is not None and poll.context.span_id != one(spans, "worker.generate").parent.span_id  # type: ignore[union-attr]


def test_an_error_is_recorded_with_its_code_and_health_probes_make_no_span(
    client: TestClient, traced: Traced, file_server: Any
) -> None:
    response = client.post("/generate", json={**SMALL, "lora_url": file_server.url("/missing"), "request_id": "gen-7"})
    assert response.status_code == 424
    assert client.get("/healthz").status_code == 200
    spans = traced.spans("worker.generate")
    generate = one(spans, "worker.generate")
    assert generate.attributes is not None and generate.attributes["vixen.error_code"] == "LORA_DOWNLOAD_FAILED"
    assert generate.status.is_ok is False
    assert not any("healthz" in span.name for span in spans)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_collector_never_fails_or_slows_a_request(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    exporter = span_exporter_from_env(os.environ)
    assert exporter is not None
    provider = TracerProvider()
    # As configure_tracing builds it, but not made the global provider.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    settings = LocalWorkerSettings(MODEL_DIR=tiny_model_dir, WORKER_DEVICE="cpu")
    try:
        with TestClient(create_app(settings, lambda: build_engine(settings), tracer_provider=provider)) as client:
            client.post("/generate", json=SMALL)  # warm-up: first run of the pipeline
            for _ in range(3):
                started = time.monotonic()
                response = client.post(
                    "/generate", json={**SMALL, "request_id": "gen-1"}, headers={"traceparent": TRACEPARENT}
                )
                assert response.status_code == 200
                assert time.monotonic() - started < 5.0
                time.sleep(0.05)  # the processor's thread tries (and fails) to export meanwhile
    finally:
        exporter.shutdown()  # ends the exporter's retries at once, so the provider's shutdown does not wait them out
        provider.shutdown()


def test_the_modal_class_continues_the_trace_it_is_handed(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, traced: Traced
) -> None:
    from gpu.modal import app as modal_app

    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_MODE", "local")
    monkeypatch.delenv("LORA_CACHE_DIR", raising=False)
    user_cls = cast(Any, modal_app.SdxlLoraWorker)._get_user_cls()
    worker = user_cls.__new__(user_cls)
    user_cls.__dict__["load"]._get_raw_f()(worker)
    user_cls.__dict__["to_gpu"]._get_raw_f()(worker)  # locally: configures no global provider
    worker.lifecycle.tracer = traced.provider.get_tracer("test")
    generate = user_cls.__dict__["generate"]._get_raw_f()

    body = generate(worker, {**SMALL, "request_id": "gen-42"}, {"traceparent": TRACEPARENT})
    assert body["http_status"] == 200
    spans = traced.spans("worker.generate")
    assert_worker_spans_under(spans, int(CALLER_SPAN_ID, 16), lora=False)

    # Through the sync web endpoint served by the class: the headers travel to the same place.
    traced.exporter.clear()
    sync = TestClient(user_cls.__dict__["generate_sync"]._get_raw_f()(worker))
    invalid_lora = {**SMALL, "request_id": "gen-42", "lora_url": "http://127.0.0.1:9/x.safetensors"}
    response = sync.post("/", json=invalid_lora, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 424
    (span,) = traced.spans("worker.generate")
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN_ID
    assert span.attributes is not None and span.attributes["vixen.error_code"] == "LORA_DOWNLOAD_FAILED"

    # Without headers (an old caller): a trace of its own, never a failure.
    traced.exporter.clear()
    assert generate(worker, SMALL)["http_status"] == 200
    (span,) = [span for span in traced.spans("worker.generate") if span.name == "worker.generate"]
    assert span.parent is None
