"""Read a Prometheus text exposition (a /metrics answer) with prometheus_client's own parser."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`; None when there is none (several: their sum)."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None


async def wait_for_metric(
    client: httpx.AsyncClient, name: str, value: float, wait: float = 10.0, **labels: str
) -> None:
    """Scrape `/metrics` until the sample reaches `value`."""
    async with asyncio.timeout(wait):
        while True:
            text = (await client.get("/metrics")).text
            if metric_value(text, name, **labels) == value:
                return
            await asyncio.sleep(0.05)
