"""Every answer counted by status class, the 500 of an error that escaped the app included, on a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from services.common.observability.metrics import ServiceMetrics
from services.common.observability.responses import RESPONSES
from tests.support.stack.live_server import live_server


def _app() -> FastAPI:
    app = FastAPI()
    app.state.metrics = ServiceMetrics("vixenbliss-test")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("an error nobody handled")

    return app


@pytest.fixture
def served() -> Iterator[tuple[FastAPI, str]]:
    app = _app()
    with live_server(app, name="counted-app") as url:  # served by server_config, as every service is
        yield app, url


def test_answers_are_counted_by_status_class_as_the_service_is_served(served: tuple[FastAPI, str]) -> None:
    app, url = served
    with httpx.Client(base_url=url) as client:
        assert client.get("/ok").status_code == 200
        assert client.get("/ok").status_code == 200
        assert client.get("/missing").status_code == 404
        assert client.get("/boom").status_code == 500
    metrics: ServiceMetrics = app.state.metrics
    counted = {c: metrics.value(f"{RESPONSES}_total", status_class=c) for c in ("2xx", "4xx", "5xx")}
    assert counted == {"2xx": 2.0, "4xx": 1.0, "5xx": 1.0}
