"""HTTP routes of the gateway: /metrics (Prometheus text); /healthz and /readyz are services.common.health's."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayStatus(Protocol):
    """What the routes read from the running gateway (main.GatewayRuntime)."""

    def metrics_text(self) -> str: ...


def get_status(request: Request) -> GatewayStatus:
    """The runtime the lifespan put on the app."""
    status: GatewayStatus = request.app.state.gateway
    return status


Status = Annotated[GatewayStatus, Depends(get_status)]
router = APIRouter()


@router.get("/metrics")
async def metrics(status: Status) -> PlainTextResponse:
    """Counters in the Prometheus text format."""
    return PlainTextResponse(status.metrics_text(), media_type=PROMETHEUS_CONTENT_TYPE)
