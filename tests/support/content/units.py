"""What content's unit tests share: roomy admission limits and a clock moved by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.content.admission import AdmissionLimits

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Wide enough that no limit refuses what a test does not aim at; tests narrow one with dataclasses.replace.
LIMITS = AdmissionLimits(
    min_side=64,
    max_side=2048,
    max_steps=100,
    max_pixel_steps=1024 * 1024 * 50,
    max_in_flight=100,
    rate_per_minute=60.0,
    burst=100,
    idempotency_ttl_seconds=3600,
)


class Clock:
    """The service's clock, moved by hand (`clock.now = …`)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward; the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now
