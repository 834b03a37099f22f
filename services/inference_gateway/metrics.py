"""The gateway's instruments by name (counters and histograms of services.common.observability.metrics), with their
help lines."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.observability.metrics import ServiceMetrics

SERVICE_NAME = "vixenbliss-inference-gateway"


@dataclass(frozen=True)
class CounterSpec:
    """A counter's name (as Prometheus shows it, `_total` included) and help line."""

    name: str
    help: str


@dataclass(frozen=True)
class HistogramSpec:
    """A histogram's name (ending with its unit) and help line."""

    name: str
    help: str


REQUESTS = CounterSpec("vixen_gateway_requests_total", "generations the runner started or finished")
COMPLETED = CounterSpec("vixen_gateway_generations_completed_total", "generation.completed events published")
FAILED = CounterSpec("vixen_gateway_generations_failed_total", "generation.failed events published, by error code")
WORKER_CALLS = CounterSpec("vixen_gateway_worker_calls_total", "worker calls, by outcome (ok or the error code)")
RETRIES = CounterSpec("vixen_gateway_retries_total", "attempts started after a retryable failure, by cause")
CANCELS = CounterSpec("vixen_gateway_cancels_total", "generation.canceled events recorded")
SKIPPED_CANCELED = CounterSpec(
    "vixen_gateway_requests_skipped_canceled_total", "generation.requested not run: canceled before it started"
)
CANCELED_RUNNING = CounterSpec(
    "vixen_gateway_running_canceled_total", "generations stopped while running (the worker told to stop)"
)
FALLBACKS = CounterSpec(
    "vixen_gateway_fallback_attempts_total", "attempts sent to the fallback endpoint after CUDA_OOM"
)
JOBS_RECORDED = CounterSpec(
    "vixen_gateway_jobs_recorded_total", "generation.requested events recorded, by outcome (queued, duplicate, ...)"
)
JOBS_RECOVERED = CounterSpec(
    "vixen_gateway_jobs_recovered_total", "jobs taken over from a runner that stopped (crash, shutdown, lost lease)"
)
LORA_LOADS = CounterSpec(
    "vixen_gateway_lora_loads_total", "LoRAs the worker applied, by where it found them (memory, disk, download)"
)
WORKER_SECONDS = HistogramSpec("vixen_gateway_worker_call_seconds", "time of one worker call, by outcome")
QUEUE_WAIT = HistogramSpec(
    "vixen_gateway_queue_wait_seconds", "from the request's time to its first attempt (broker and job queue)"
)
IN_FLIGHT = "vixen_gateway_worker_calls_in_flight"
# Queued or running jobs in the shared job table: every replica reports the same count (KEDA scales on its max).
JOBS_OPEN = "vixen_gateway_jobs_open"
# Shown at 0 before anything happened (a dashboard tells "nothing yet" from "no data").
UNLABELED = (REQUESTS, COMPLETED, CANCELS, SKIPPED_CANCELED, CANCELED_RUNNING, FALLBACKS, JOBS_RECOVERED)


class Metrics:
    """The gateway's view of its app's ServiceMetrics."""

    def __init__(self, service: ServiceMetrics | None = None) -> None:
        self.service = service or ServiceMetrics(SERVICE_NAME)
        for counter in UNLABELED:
            self.inc(counter, 0.0)
        self.service.move(IN_FLIGHT, 0.0, "worker calls in progress")

    def inc(self, counter: CounterSpec, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to the counter's series for `labels`."""
        self.service.add(counter.name.removesuffix("_total"), amount, counter.help, **labels)

    def observe(self, histogram: HistogramSpec, seconds: float, **labels: str) -> None:
        """Record a duration."""
        self.service.observe(histogram.name, max(seconds, 0.0), histogram.help, labels)

    def in_flight(self, delta: int) -> None:
        """A worker call began (+1) or ended (-1)."""
        self.service.move(IN_FLIGHT, float(delta), "worker calls in progress")

    def value(self, counter: CounterSpec, **labels: str) -> float:
        """The current value of one series (0 when never bumped)."""
        return self.service.value(counter.name, **labels)

    def render(self) -> str:
        """Every instrument, Prometheus text format."""
        return self.service.render().decode()
