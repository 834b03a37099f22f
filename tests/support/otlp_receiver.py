"""A real OTLP/HTTP trace receiver on loopback for tests: collects exported spans and waits for them."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TypeAlias

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # types-protobuf not installed
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_PATH = "/v1/traces"
_PROTOBUF = "application/x-protobuf"

AttributeValue: TypeAlias = "str | bool | int | float | bytes | list[AttributeValue] | dict[str, AttributeValue] | None"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it; ids are lowercase hex, kind and status are short names."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # "SERVER", "CLIENT", "PRODUCER", "CONSUMER", "INTERNAL" (or "UNSPECIFIED")
    service_name: str | None
    attributes: dict[str, AttributeValue]
    start_ns: int
    end_ns: int
    status_code: str  # "UNSET", "OK", "ERROR"
    links: list[tuple[str, str]]  # (trace_id, span_id) of each linked span

    def describe(self) -> str:
        return f"{self.name} [{self.service_name}] {self.kind} {self.status_code} span={self.span_id}"


def _value(value: AnyValue) -> AttributeValue:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return value.bytes_value
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, AttributeValue]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _short(enum_name: str, prefix: str) -> str:
    # The proto enum names carry a prefix (SPAN_KIND_SERVER, STATUS_CODE_OK) that tests should not have to spell.
    return enum_name.removeprefix(prefix)


def _decode(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        # A root span is sent with empty parent bytes, not an all-zero id.
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=_short(Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
                        service_name=service if isinstance(service, str) else None,
                        attributes=_attributes(span.attributes),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=_short(Status.StatusCode.Name(span.status.code), "STATUS_CODE_"),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    )
                )
    return received


def _tree_lines(members: list[ReceivedSpan]) -> list[str]:
    ids = {s.span_id for s in members}
    children: dict[str | None, list[ReceivedSpan]] = {}
    for span in sorted(members, key=lambda s: s.start_ns):
        # A span whose parent never arrived (or lives in another process's unexported part) is shown as a root.
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []
    # Depth-first with an explicit stack (children pushed in reverse so they pop in start order).
    stack = [(span, 1) for span in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        lines.append("  " * depth + span.describe())
        stack.extend((child, depth + 1) for child in reversed(children.get(span.span_id, [])))
    return lines


def render_tree(spans: list[ReceivedSpan]) -> str:
    """The spans as indented trees (parent, then its children by start time), one block per trace."""
    ordered = sorted(spans, key=lambda s: s.start_ns)
    blocks = [
        "\n".join([f"trace {trace_id}", *_tree_lines([s for s in ordered if s.trace_id == trace_id])])
        for trace_id in dict.fromkeys(s.trace_id for s in ordered)
    ]
    return "\n".join(blocks) if blocks else "(no spans)"


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf trace exports on http://127.0.0.1:<free port>/v1/traces and keeps the spans."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        # One condition guards the list and wakes waiters on every export, so wait_for never polls.
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-receiver", daemon=True
        )

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the SDK appends /v1/traces to that variable itself)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def traces_url(self) -> str:
        """The full URL, for OTLPSpanExporter(endpoint=...) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""
        return self.endpoint + TRACES_PATH

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def spans(self) -> list[ReceivedSpan]:
        """A copy of every span received so far, in arrival order."""
        with self._changed:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The received spans of one trace, by start time."""
        return sorted((s for s in self.spans() if s.trace_id == trace_id), key=lambda s: s.start_ns)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float) -> list[ReceivedSpan]:
        """Block until predicate(all spans so far) holds and return those spans; TimeoutError lists what came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                snapshot = list(self._spans)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"spans not received within {timeout}s; got {self._summary(snapshot)}")
                self._changed.wait(remaining)

    @staticmethod
    def _summary(spans: list[ReceivedSpan]) -> str:
        if not spans:
            return "no spans"
        return f"{len(spans)} span(s):\n{render_tree(spans)}"

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def _handler_class(self) -> Callable[..., BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps the exporter's pooled connection open between exports.
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.split("?", 1)[0] != TRACES_PATH:
                    self._answer(404, b"only /v1/traces is served")
                    return
                if (self.headers.get("Content-Type") or "").split(";", 1)[0].strip() != _PROTOBUF:
                    self._answer(415, b"only application/x-protobuf is accepted")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
                request = ExportTraceServiceRequest()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    request.ParseFromString(body)
                except (OSError, zlib.error, DecodeError) as exc:
                    self._answer(400, f"undecodable export: {exc}".encode())
                    return
                receiver._add(_decode(request))
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), _PROTOBUF)

        return Handler
