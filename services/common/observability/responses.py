"""Every HTTP answer a service gives, counted by status class (`vixen_http_responses_total{status_class}`): the
5xx rate the alert rules watch. It wraps the whole app as served, so a 500 for an unhandled error counts too."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RESPONSES = "vixen_http_responses"


class ResponseCounter:
    """ASGI wrapper: one count per response, into the app's `state.metrics` (a ServiceMetrics) once it has one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def counting_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self._count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not answered:
                self._count(500)  # the server answers 500 for an error that escaped before any response
            raise

    def _count(self, status: int) -> None:
        metrics: Any = getattr(getattr(self.app, "state", None), "metrics", None)
        if metrics is not None:
            metrics.add(RESPONSES, 1.0, "HTTP responses, by status class", status_class=f"{status // 100}xx")
