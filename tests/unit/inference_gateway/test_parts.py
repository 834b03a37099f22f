"""Small pure parts of the gateway: sanitizing, PNG checks, metrics text, the HTTP routes."""

from __future__ import annotations

import base64

import httpx
import pytest
from fastapi import FastAPI

from services.common.observability.metrics import router
from services.inference_gateway.images import InvalidImageError, decode_png
from services.inference_gateway.metrics import COMPLETED, FAILED, REQUESTS, WORKER_SECONDS, Metrics
from services.inference_gateway.sanitize import sanitize_details, sanitize_text
from tests.support.gateway.fakes import png_bytes
from tests.support.prometheus import metric_value


def test_sanitize_strips_queries_tokens_and_bounds_size() -> None:
    text = "fetch https://acc.r2.cloudflarestorage.com/b/k?X-Amz-Signature=abc&X-Amz-Date=1 failed; Bearer tok123456"
    assert sanitize_text(text) == "fetch https://acc.r2.cloudflarestorage.com/b/k failed; Bearer [REDACTED]"
    assert sanitize_text("plain http://h/p?x=1#frag") == "plain http://h/p"
    assert len(sanitize_text("x" * 5000)) == 500
    assert sanitize_text("value is my-secret-value", ["my-secret-value"]) == "value is [REDACTED]"
    details = sanitize_details(
        {"url": "http://h/p?sig=1", "n": 3, "ok": True, "none": None, "list": ["http://h/q?a=b"] * 50, "o": object()}
    )
    assert details["url"] == "http://h/p" and details["n"] == 3 and details["ok"] is True and details["none"] is None
    assert details["list"] == ["http://h/q"] * 20
    assert isinstance(details["o"], str)


def test_decode_png_accepts_the_requested_size_only() -> None:
    data = png_bytes(64, 128)
    checked = decode_png(base64.b64encode(data).decode(), 64, 128)
    assert checked.data == data and checked.size_bytes == len(data) and len(checked.sha256) == 64
    with pytest.raises(InvalidImageError, match="size"):
        decode_png(base64.b64encode(data).decode(), 128, 64)
    with pytest.raises(InvalidImageError, match="does not decode"):
        decode_png(base64.b64encode(data[: len(data) // 2]).decode(), 64, 128)
    with pytest.raises(InvalidImageError, match="empty"):
        decode_png("", 64, 64)


def test_metrics_render_prometheus_text() -> None:
    metrics = Metrics()
    metrics.inc(COMPLETED)
    metrics.inc(FAILED, error_code="LORA_LOAD_FAILED")
    metrics.inc(FAILED, error_code='we"ird')
    metrics.observe(WORKER_SECONDS, 1.5, outcome="ok")
    text = metrics.render()
    assert "# TYPE vixen_gateway_generations_completed_total counter" in text
    assert metric_value(text, "vixen_gateway_generations_completed_total") == 1
    assert metric_value(text, "vixen_gateway_generations_failed_total", error_code="LORA_LOAD_FAILED") == 1
    assert 'error_code="we\\"ird"' in text
    assert metric_value(text, "vixen_gateway_requests_total") == 0  # shown before anything happened
    assert metric_value(text, "vixen_gateway_worker_call_seconds_count", outcome="ok") == 1
    assert metric_value(text, "vixen_gateway_worker_call_seconds_bucket", outcome="ok", le="2") == 1
    assert metrics.value(FAILED, error_code="LORA_LOAD_FAILED") == 1


async def test_the_metrics_route_answers_the_apps_metrics_in_prometheus_text() -> None:
    app = FastAPI()
    app.include_router(router)
    app.state.metrics = Metrics().service
    Metrics(app.state.metrics).inc(REQUESTS, 4)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and metric_value(metrics.text, "vixen_gateway_requests_total") == 4
    assert metrics.headers["content-type"].startswith("text/plain; version=")
