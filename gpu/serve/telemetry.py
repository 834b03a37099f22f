"""The worker's tracing: one tracer provider per process from the standard OTEL_* variables, and one request's spans."""

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Status, StatusCode

from contracts.worker import WorkerError, WorkerSuccess

log = logging.getLogger("gpu.serve.telemetry")

TRACER_NAME = "gpu.worker"
DEFAULT_SERVICE_NAME = "vixenbliss-worker"
# Any of these set (and OTEL_TRACES_EXPORTER unset) means "export over OTLP".
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_EXPORTER_NAMES = ("otlp", "otlp_proto_http", "otlp_proto_grpc")


def configure_tracing(service_name: str = DEFAULT_SERVICE_NAME) -> TracerProvider:
    """Build the SDK provider, make it the global one, and attach the exporter OTEL_* asks for (if any).

    Call once per process, at start (the local server's main, the Modal container's start): never at import,
    never in an app factory. Without an exporter spans are still made, so the trace context goes on.
    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override `service_name`.
    """
    detected = OTELResourceDetector().detect().attributes
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name, **detected}))
    exporter = span_exporter_from_env(os.environ)
    if exporter is not None:
        # Exports on its own thread with the SDK's timeout: a slow or absent collector never holds a request.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def span_exporter_from_env(environ: Mapping[str, str]) -> SpanExporter | None:
    """The exporter OTEL_TRACES_EXPORTER names ("otlp", "console", "none"), or OTLP when only an endpoint is set.

    None when nothing is asked, or when the exporter cannot be built (one warning: start-up goes on without it).
    """
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not names:
        names = ["otlp"] if any(environ.get(variable) for variable in OTLP_ENDPOINT_VARIABLES) else []
    if len(names) > 1:
        log.warning("OTEL_TRACES_EXPORTER names %s: the worker uses the first one only", names)
    name = names[0] if names else "none"
    try:
        if name == "none":
            return None
        if name == "console":
            return ConsoleSpanExporter(service_name=environ.get("OTEL_SERVICE_NAME"))
        if name in OTLP_EXPORTER_NAMES:
            return _otlp_exporter(name, environ)
    except Exception as error:  # an exporter is never a hard dependency of start-up
        log.warning("tracing exporter %r could not be built (%s): spans are not exported", name, error)
        return None
    log.warning("unknown OTEL_TRACES_EXPORTER %r: spans are not exported", name)
    return None


def _otlp_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    """OTLP over HTTP (the worker's own dependency), or over gRPC when asked and installed. The exporter reads
    its endpoint, headers and timeout from OTEL_EXPORTER_OTLP_* itself."""
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    if name == "otlp_proto_grpc" or (name == "otlp" and protocol.strip().lower() == "grpc"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def record_request(
    tracer: trace.Tracer,
    outcome: WorkerSuccess | WorkerError,
    *,
    arrived_ns: int,
    ended_ns: int,
    request_id: str | None,
    context: Context | None = None,
) -> None:
    """The spans of one served request, made after it ended, under `context` (the caller's; the current one if None).

    `worker.generate` covers arrival → end (epoch nanoseconds). For a success its children follow one another:
    `worker.queue_wait` (arrival until the engine began: the whole minus `timings.total_ms`), then
    `worker.download`, `worker.load`, `worker.denoise`, `worker.decode_encode`, `worker.restore` (download, load
    and restore only when the request named a LoRA). The engine measures durations, not instants: the children
    are placed end to end from those measured durations, so small gaps between phases are not shown. An error
    carries no timings: `worker.generate` alone, status ERROR, with `vixen.error_code`.
    """
    attributes: dict[str, str] = {"vixen.generation_id": request_id} if request_id else {}
    span = tracer.start_span("worker.generate", context=context, start_time=arrived_ns, attributes=attributes)
    if isinstance(outcome, WorkerError):
        span.set_attribute("vixen.error_code", outcome.error_code.value)
        span.set_status(Status(StatusCode.ERROR, outcome.error))
    elif outcome.timings is not None:
        timings = outcome.timings
        span.set_attribute("vixen.lora_source", timings.lora_source)
        engine_ns = _ns(timings.total_ms)
        phases = [("worker.queue_wait", max(ended_ns - arrived_ns - engine_ns, 0))]
        if timings.lora_source != "none":
            phases += [("worker.download", _ns(timings.download_ms)), ("worker.load", _ns(timings.load_ms))]
        phases += [("worker.denoise", _ns(timings.denoise_ms)), ("worker.decode_encode", _ns(timings.decode_encode_ms))]
        if timings.lora_source != "none":
            phases.append(("worker.restore", _ns(timings.restore_ms)))
        parent = trace.set_span_in_context(span, context)
        cursor = arrived_ns
        for name, duration_ns in phases:
            # Rounded milliseconds may add up past the end: no child outlasts its parent.
            end = min(cursor + duration_ns, ended_ns)
            tracer.start_span(name, context=parent, start_time=cursor).end(end_time=end)
            cursor = end
    span.end(end_time=ended_ns)


def _ns(milliseconds: float) -> int:
    return max(round(milliseconds * 1_000_000), 0)
