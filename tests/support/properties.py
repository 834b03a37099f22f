"""Hypothesis settings for the property tests: bounded examples, derandomized (a fixed seed: the same cases every
run, so `make test` is repeatable), no example database and no per-example deadline (CI machines vary)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def bounded(max_examples: int = 200) -> settings:
    """At most `max_examples` cases, always the same ones."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
