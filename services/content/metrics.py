"""Content's generation metrics: submitted, finished by status and error code, end-to-end time and queue wait."""

from __future__ import annotations

from datetime import datetime

from services.common.observability.metrics import ServiceMetrics
from services.content.models import Generation, GenerationStatus

SUBMITTED = "vixen_content_generations_submitted"
FINISHED = "vixen_content_generations_finished"
END_TO_END = "vixen_content_generation_seconds"
QUEUE_WAIT = "vixen_content_queue_wait_seconds"
FINAL = (GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELED)


class GenerationMetrics:
    """Counts what happened to generations in this process (nothing when the app has no metrics)."""

    def __init__(self, metrics: ServiceMetrics | None) -> None:
        self._metrics = metrics

    def submitted(self) -> None:
        """A generation was accepted (not an idempotent replay)."""
        if self._metrics is not None:
            self._metrics.add(SUBMITTED, 1, "generations accepted")

    def changed(self, generation: Generation, status_before: str, started_before: datetime | None) -> None:
        """After a generation's change committed: count its start and its end, if this change made them."""
        if self._metrics is None:
            return
        if started_before is None and generation.started_at is not None:
            waited = (generation.started_at - generation.created_at).total_seconds()
            self._metrics.observe(QUEUE_WAIT, max(waited, 0.0), "from submit to the attempt that made the image")
        status = GenerationStatus(generation.status)
        if status is GenerationStatus(status_before) or status not in FINAL:
            return
        error_code = str((generation.error or {}).get("error_code", "")) if status is GenerationStatus.FAILED else ""
        self._metrics.add(
            FINISHED, 1, "generations finished, by status and error code", status=status.value, error_code=error_code
        )
        if generation.finished_at is not None:
            seconds = (generation.finished_at - generation.created_at).total_seconds()
            labels = {"status": status.value}
            self._metrics.observe(END_TO_END, max(seconds, 0.0), "from submit to the end, by status", labels)
