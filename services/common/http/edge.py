"""Limits at the edge, before authentication and before parsing: the settings, and the body cap of each route.

A request body is counted while it streams in (a lying or absent Content-Length too) and refused with 413 as soon
as it passes its route's cap; a body that trickles in is cut with 408. Routes that take a JSON body get
HTTP_MAX_BODY_BYTES, every other route (and an unknown path) a few hundred bytes: LoRA files never pass through the
services (they go to storage by presigned URL). The header block's cap (431) and the slow-header timeout (408) are
the HTTP protocol's (services/common/http/edge_protocol.py), since they must hold before any request exists.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from services.common.app.settings import SecretCheckedSettings
from services.common.http.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KIB = 1024
# A route without a body parameter reads none: a client may still send `{}`, nothing bigger is of any use.
NO_BODY_BYTES = 512
BODY_TOO_LARGE = "BODY_TOO_LARGE"
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
_TEMPLATE = re.compile(r"(\{[^}]*\})")


class EdgeSettings(SecretCheckedSettings):
    """What every service accepts from a client before it knows who the client is."""

    # The largest JSON body of any route: content's submit at its longest prompts with every character escaped
    # (\\uXXXX, twice for one outside the BMP) and identity's 50 trigger words both fit; nothing else comes close.
    http_max_body_bytes: int = Field(
        default=64 * KIB, ge=KIB, le=16 * 1024 * KIB, validation_alias="HTTP_MAX_BODY_BYTES"
    )
    # Request line and headers together (a bearer token is at most AUTH_MAX_TOKEN_BYTES, 8 KiB by default).
    http_max_header_bytes: int = Field(
        default=32 * KIB, ge=4 * KIB, le=1024 * KIB, validation_alias="HTTP_MAX_HEADER_BYTES"
    )
    # From a connection's first byte (or its request's first byte) to the end of its headers.
    http_header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, validation_alias="HTTP_HEADER_TIMEOUT_SECONDS"
    )
    # From the end of the headers to the end of the body.
    http_body_timeout_seconds: float = Field(default=10.0, gt=0, le=300, validation_alias="HTTP_BODY_TIMEOUT_SECONDS")


@dataclass(frozen=True)
class EdgeLimits:
    """The limits one app applies (from EdgeSettings)."""

    max_body_bytes: int = 64 * KIB
    max_header_bytes: int = 32 * KIB
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> EdgeLimits:
        return cls(
            max_body_bytes=settings.http_max_body_bytes,
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout_seconds=settings.http_header_timeout_seconds,
            body_timeout_seconds=settings.http_body_timeout_seconds,
        )


@dataclass(frozen=True)
class BodyRoute:
    """An operation that takes a request body: its method and a pattern of its path."""

    method: str
    path: re.Pattern[str]


def body_routes(openapi: Mapping[str, Any]) -> tuple[BodyRoute, ...]:
    """The operations of an OpenAPI document that take a request body (the app's own account of its routes)."""
    routes = []
    for template, operations in openapi.get("paths", {}).items():
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in _TEMPLATE.split(template))
        for method, operation in operations.items():
            if isinstance(operation, Mapping) and "requestBody" in operation:
                routes.append(BodyRoute(method.upper(), re.compile(f"^{pattern}$")))
    return tuple(routes)


def body_cap(routes: tuple[BodyRoute, ...], method: str, path: str, max_body_bytes: int) -> int:
    """The body cap of a request: the JSON cap for an operation that takes a body, else NO_BODY_BYTES (also for a
    path no route takes)."""
    takes_body = any(route.method == method and route.path.match(path) for route in routes)
    return max_body_bytes if takes_body else NO_BODY_BYTES


def declared_length(scope: Scope) -> int | None:
    """The Content-Length a request declares; None without one; -1 when it is not one decimal number."""
    values = [value for name, value in scope.get("headers", ()) if name == b"content-length"]
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        return -1
    return int(values[0])


def has_body(scope: Scope, declared: int | None) -> bool:
    """Whether the request says a body follows (a Content-Length `declared` other than 0, or a Transfer-Encoding)."""
    headers = scope.get("headers", ())
    return any(name == b"transfer-encoding" for name, _ in headers) or (declared or 0) != 0


class _Refused(Exception):
    """The body broke a limit: the middleware answers in place of the app."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def send_refusal(send: Send, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
    """A uniform error body, and the connection closed after it (the rest of the body is never read)."""
    body = json.dumps(error_body(message, code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in (extra or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class EdgeLimitsMiddleware:
    """Counts each request body as it arrives and refuses it past its route's cap (413) or its time (408), before
    the app (authentication included) reads any of it."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits) -> None:
        self.app = app
        self.limits = limits
        self._routes: tuple[BodyRoute, ...] | None = None

    def _body_routes(self, scope: Scope) -> tuple[BodyRoute, ...]:
        # Read once, at the first request with a body: every router is included by then.
        if self._routes is None:
            self._routes = body_routes(scope["app"].openapi())
        return self._routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = declared_length(scope) if scope["type"] == "http" else None
        if scope["type"] != "http" or not has_body(scope, declared):
            await self.app(scope, receive, send)
            return
        cap = body_cap(self._body_routes(scope), scope["method"], scope["path"], self.limits.max_body_bytes)
        if declared == -1:
            await send_refusal(send, 400, "INVALID_REQUEST", "Content-Length is not one decimal number")
            return
        if declared is not None and declared > cap:
            await send_refusal(send, 413, BODY_TOO_LARGE, _too_large(cap))
            return
        await self._counted(scope, receive, send, cap)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.limits.body_timeout_seconds
        received = 0
        complete = False
        started = False
        refused: _Refused | None = None

        async def counted_receive() -> Message:
            nonlocal received, complete, refused
            if complete:
                return await receive()  # the body is in: what follows is a disconnect, never timed
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                refused = _Refused(408, REQUEST_TIMEOUT, "the request body did not arrive in time")
                raise refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > cap:
                    refused = _Refused(413, BODY_TOO_LARGE, _too_large(cap))
                    raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:
                return  # the app's own answer to the exception it saw: the refusal goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not started:
            await send_refusal(send, refused.status, refused.code, refused.message)


def _too_large(cap: int) -> str:
    return f"the request body is over this route's limit of {cap} bytes"


def install_edge_limits(app: Any, settings: EdgeSettings) -> None:
    """Count and cap every request body of `app` before anything of it is read (the outermost middleware)."""
    app.add_middleware(EdgeLimitsMiddleware, limits=EdgeLimits.from_settings(settings))
