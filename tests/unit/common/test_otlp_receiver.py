"""The OTLP/HTTP test receiver takes real SDK exports: plain, gzip, and the env-variable endpoint in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, render_tree

LINKED_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
LINKED_SPAN = 0xB7AD6B7169203331


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def _provider(receiver: OtlpReceiver, compression: Compression | None = None) -> TracerProvider:
    # A private provider, never the global one: other tests (and the services) own that.
    provider = TracerProvider(resource=Resource.create({"service.name": "test-svc"}))
    # The constructor's endpoint is used verbatim, so it needs the /v1/traces path (the env variable does not).
    exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


def test_parent_and_child_arrive_with_ids_kinds_attributes_link_and_status(receiver: OtlpReceiver) -> None:
    provider = _provider(receiver)
    tracer = provider.get_tracer("otlp-receiver-test")
    linked = SpanContext(LINKED_TRACE, LINKED_SPAN, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.route", "/v1/things")
        parent.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span(
            "child",
            kind=SpanKind.CLIENT,
            attributes={"count": 3, "ratio": 0.5, "ok": True, "tags": ["a", "b"]},
            links=[Link(linked)],
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
    assert provider.force_flush()

    spans = receiver.wait_for(lambda got: {"parent", "child"} <= {s.name for s in got}, timeout=10)
    got = _by_name(spans)
    assert len(spans) == 2, render_tree(spans)
    sent_parent, sent_child = parent.get_span_context(), child.get_span_context()
    received_parent, received_child = got["parent"], got["child"]

    assert received_parent.trace_id == f"{sent_parent.trace_id:032x}"
    assert received_parent.span_id == f"{sent_parent.span_id:016x}"
    assert received_parent.parent_span_id is None
    assert received_child.trace_id == received_parent.trace_id
    assert received_child.span_id == f"{sent_child.span_id:016x}"
    assert received_child.parent_span_id == received_parent.span_id
    assert (received_parent.kind, received_child.kind) == ("SERVER", "CLIENT")
    assert {received_parent.service_name, received_child.service_name} == {"test-svc"}
    assert received_parent.attributes == {"http.route": "/v1/things"}
    assert received_child.attributes == {"count": 3, "ratio": 0.5, "ok": True, "tags": ["a", "b"]}
    assert received_child.links == [(f"{LINKED_TRACE:032x}", f"{LINKED_SPAN:016x}")]
    assert received_parent.links == []
    assert (received_parent.status_code, received_child.status_code) == ("OK", "ERROR")
    assert received_parent.start_ns <= received_child.start_ns <= received_child.end_ns <= received_parent.end_ns
    assert receiver.trace(received_parent.trace_id) == [received_parent, received_child]

    tree = render_tree(spans).splitlines()
    assert tree[0] == f"trace {received_parent.trace_id}"
    assert tree[1].startswith("  parent [test-svc] SERVER OK")
    assert tree[2].startswith("    child [test-svc] CLIENT ERROR")
    provider.shutdown()


def test_gzip_compressed_export_is_decoded(receiver: OtlpReceiver) -> None:
    provider = _provider(receiver, compression=Compression.Gzip)
    with provider.get_tracer("otlp-receiver-test").start_as_current_span("zipped", kind=SpanKind.PRODUCER):
        pass
    assert provider.force_flush()

    (span,) = receiver.wait_for(lambda got: any(s.name == "zipped" for s in got), timeout=10)
    assert (span.kind, span.service_name, span.status_code) == ("PRODUCER", "test-svc", "UNSET")
    provider.shutdown()


def test_env_variable_endpoint_reaches_the_receiver_from_another_process(receiver: OtlpReceiver) -> None:
    # No endpoint argument: the exporter must build <OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces itself.
    script = textwrap.dedent(
        """
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        with provider.get_tracer("subprocess").start_as_current_span("from-env", kind=SpanKind.CONSUMER):
            pass
        provider.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SERVICE_NAME": "env-svc",
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    (span,) = receiver.wait_for(lambda got: any(s.name == "from-env" for s in got), timeout=10)
    assert (span.kind, span.service_name) == ("CONSUMER", "env-svc")


def test_wait_for_times_out_listing_what_arrived(receiver: OtlpReceiver) -> None:
    provider = _provider(receiver)
    with provider.get_tracer("otlp-receiver-test").start_as_current_span("only-this"):
        pass
    assert provider.force_flush()
    receiver.wait_for(lambda got: len(got) == 1, timeout=10)

    with pytest.raises(TimeoutError, match=r"(?s)1 span\(s\).*only-this \[test-svc\] INTERNAL UNSET"):
        receiver.wait_for(lambda got: any(s.name == "never" for s in got), timeout=0.2)
    provider.shutdown()


def test_other_paths_and_bad_bodies_are_refused(receiver: OtlpReceiver) -> None:
    def post(path: str, body: bytes, content_type: str = "application/x-protobuf") -> int:
        request = urllib.request.Request(
            receiver.endpoint + path, data=body, method="POST", headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            return refused.code

    assert post("/v1/metrics", b"") == 404
    assert post("/v1/traces", b"{}", content_type="application/json") == 415
    assert post("/v1/traces", b"\xff\xff\xff") == 400
    assert post("/v1/traces", b"") == 200  # an empty export is valid protobuf
    assert receiver.spans() == []
