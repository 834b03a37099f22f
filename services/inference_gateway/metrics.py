"""In-process counters rendered in the Prometheus text format (no client library needed for a few counters)."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CounterSpec:
    """A counter's name and help line."""

    name: str
    help: str


REQUESTS = CounterSpec("vixen_gateway_requests_total", "generation.requested events handled")
COMPLETED = CounterSpec("vixen_gateway_generations_completed_total", "generation.completed events published")
FAILED = CounterSpec("vixen_gateway_generations_failed_total", "generation.failed events published, by error code")
WORKER_CALLS = CounterSpec("vixen_gateway_worker_calls_total", "worker calls, by outcome (ok or the error code)")
WORKER_SECONDS = CounterSpec("vixen_gateway_worker_call_seconds_total", "seconds spent waiting for the worker")
RETRIES = CounterSpec("vixen_gateway_retries_total", "attempts started after a retryable failure")
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
ALL_COUNTERS = (
    REQUESTS,
    COMPLETED,
    FAILED,
    WORKER_CALLS,
    WORKER_SECONDS,
    RETRIES,
    CANCELS,
    SKIPPED_CANCELED,
    CANCELED_RUNNING,
    FALLBACKS,
    JOBS_RECORDED,
    JOBS_RECOVERED,
)


class Metrics:
    """Monotonic counters with optional labels; safe to bump from any thread."""

    def __init__(self) -> None:
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._lock = threading.Lock()

    def inc(self, counter: CounterSpec, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to the counter's series for `labels`."""
        key: Labels = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[counter.name]
            series[key] = series.get(key, 0.0) + amount

    def value(self, counter: CounterSpec, **labels: str) -> float:
        """The current value of one series (0 when never bumped)."""
        with self._lock:
            return self._values.get(counter.name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """All counters in the Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        for counter in ALL_COUNTERS:
            lines.append(f"# HELP {counter.name} {counter.help}")
            lines.append(f"# TYPE {counter.name} counter")
            series = snapshot.get(counter.name) or {(): 0.0}
            for labels, value in sorted(series.items()):
                lines.append(f"{counter.name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
