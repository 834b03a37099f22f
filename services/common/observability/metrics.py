"""Metrics of one service app: OpenTelemetry instruments, read in the Prometheus text format on `/metrics`.

Each app gets its own MeterProvider and Prometheus registry (not the process-global ones): apps built side by
side in one test process never count into each other, and a counter's value is what its own app did. A scrape
collects at that moment (the Prometheus reader is pull-based): nothing runs in the background.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation, UpDownCounter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Seconds: from a cached-LoRA request on a warm GPU (~1 s) to a cold start with a download (minutes).
DURATION_BUCKETS: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)

Labels = Mapping[str, str]


class ServiceMetrics:
    """The instruments of one app, created on first use by name, and their Prometheus rendering."""

    def __init__(self, service_name: str) -> None:
        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=self.registry)
        self._provider = MeterProvider(
            metric_readers=[reader], resource=Resource.create({"service.name": service_name})
        )
        self._meter = self._provider.get_meter("vixenbliss")
        self._counters: dict[str, Counter] = {}
        self._up_down: dict[str, UpDownCounter] = {}
        self._histograms: dict[str, Histogram] = {}

    def add(self, name: str, amount: float = 1.0, description: str = "", **labels: str) -> None:
        """Add to a monotonic counter (`name` without `_total`: the rendering appends it)."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = self._meter.create_counter(name, description=description)
        counter.add(amount, labels)

    def move(self, name: str, amount: float, description: str = "", **labels: str) -> None:
        """Move an up-down counter (things in progress: in-flight calls)."""
        gauge = self._up_down.get(name)
        if gauge is None:
            gauge = self._up_down[name] = self._meter.create_up_down_counter(name, description=description)
        gauge.add(amount, labels)

    def observe(
        self,
        name: str,
        value: float,
        description: str = "",
        labels: Labels | None = None,
        *,
        unit: str = "s",
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        """Record a value in a histogram (`name` ends with its unit, e.g. `_seconds`)."""
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = self._meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=list(buckets)
            )
        histogram.record(value, dict(labels or {}))

    def gauge(self, name: str, read: Callable[[], Iterable[tuple[float, Labels]]], description: str = "") -> None:
        """A value read at each scrape (`read` returns (value, labels) pairs; it must be quick and not block)."""

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, dict(labels)) for value, labels in read()]

        self._meter.create_observable_gauge(name, callbacks=[callback], description=description)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a sample as Prometheus shows it (a counter's name ends with `_total`), summed over
        the series whose labels include `labels`; 0 if never recorded."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def render(self) -> bytes:
        """Every instrument, Prometheus text format."""
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Stop the provider (an app's lifespan ends)."""
        self._provider.shutdown()


class Lagging(Protocol):
    """Something that can say how far behind it is (services.common.messaging.outbox.OutboxRelay)."""

    def lag_seconds(self) -> float: ...


OUTBOX_LAG = "vixen_outbox_lag_seconds"


def watch_outbox(metrics: ServiceMetrics, relay: Lagging) -> None:
    """The age of the oldest unsent outbox row, as a gauge."""
    metrics.gauge(OUTBOX_LAG, lambda: [(relay.lag_seconds(), {})], "age of the oldest outbox row not yet published")


@contextlib.asynccontextmanager
async def app_metrics(app: FastAPI, service_name: str) -> AsyncIterator[ServiceMetrics]:
    """The app's metrics for the length of its lifespan, served by `router` at /metrics; shut down after."""
    metrics = ServiceMetrics(service_name)
    app.state.metrics = metrics
    try:
        yield metrics
    finally:
        metrics.shutdown()


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The app's metrics in the Prometheus text format (the app's `state.metrics`, a ServiceMetrics)."""
    service_metrics: ServiceMetrics | None = getattr(request.app.state, "metrics", None)
    body = service_metrics.render() if service_metrics is not None else b""
    return Response(body, media_type=CONTENT_TYPE_LATEST)
