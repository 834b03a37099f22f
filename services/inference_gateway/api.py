"""HTTP routes of the gateway: /healthz (broker and consumer) and /metrics (Prometheus text)."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayStatus(Protocol):
    """What the routes read from the running gateway (main.GatewayRuntime)."""

    def health(self) -> tuple[bool, dict[str, object]]: ...

    def metrics_text(self) -> str: ...


def get_status(request: Request) -> GatewayStatus:
    """The runtime the lifespan put on the app."""
    status: GatewayStatus = request.app.state.gateway
    return status


Status = Annotated[GatewayStatus, Depends(get_status)]
router = APIRouter()


@router.get("/healthz")
async def healthz(status: Status) -> JSONResponse:
    """200 while the broker is connected and the consumer runs, else 503."""
    healthy, body = status.health()
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics")
async def metrics(status: Status) -> PlainTextResponse:
    """Counters in the Prometheus text format."""
    return PlainTextResponse(status.metrics_text(), media_type=PROMETHEUS_CONTENT_TYPE)
