"""The HTTP protocol every service serves with: uvicorn's httptools protocol with a cap on the header block (431)
and a deadline for it (408), which httptools alone does not have (a 50 MB header was accepted, and a client
sending one header line a minute held its connection forever); and the one uvicorn configuration of a service."""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from services.common.http.edge import HEADERS_TOO_LARGE, REQUEST_TIMEOUT, EdgeLimits
from services.common.http.errors import error_body
from services.common.observability.responses import ResponseCounter

# A stop waits this long for requests in progress (a long `Prefer: wait`, an event stream), then closes them.
GRACEFUL_SHUTDOWN_SECONDS = 10


class _HeaderBlockTooLarge(Exception):
    """Raised from the parser's callback: the headers of this request are over the cap."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a bounded header block and a deadline for it. `limits` is set on a subclass per server
    (`protocol_for`): uvicorn builds protocols from a class."""

    limits = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Between requests (and before the first), bytes count as the header block of the next one.
        self._reading_headers = True
        self._header_bytes = 0
        self._header_deadline: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a whole request line and headers is closed (uvicorn times out only the
        # idle time after a response).
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._reading_headers:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeaderBlockTooLarge):
                self._refuse(431, HEADERS_TOO_LARGE, "the request's headers are too large")
                return
            self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Still inside the headers after everything received so far: all of it counts against the cap.
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, HEADERS_TOO_LARGE, "the request's headers are too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            raise _HeaderBlockTooLarge()
        self._reading_headers = False
        self._header_bytes = 0
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_headers = True
        self._header_bytes = 0

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.limits.header_timeout_seconds, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._reading_headers and not self.transport.is_closing():
            self._refuse(408, REQUEST_TIMEOUT, "the request's headers did not arrive in time")

    def _invalid(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in the uniform error shape and close: nothing more of this connection is read."""
        self._disarm_header_deadline()
        if self.transport.is_closing():
            return
        self.logger.warning("refused a request before reading it: %d %s", status, code)
        body = json.dumps(error_body(message, code)).encode()
        head = [
            STATUS_LINE[status],
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_for(limits: EdgeLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class of a server with these limits."""
    return type("EdgeHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def server_config(app: Any, *, host: str, port: int, limits: EdgeLimits, **options: Any) -> uvicorn.Config:
    """How every service is served (and every test serves one on a real socket).

    log_config=None: uvicorn's loggers propagate to the root handler, which redacts."""
    settings: dict[str, Any] = {"log_config": None, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS, **options}
    # Every response counted by status class, the 500s of errors that escaped the app included (the alert rules).
    return uvicorn.Config(ResponseCounter(app), host=host, port=port, http=protocol_for(limits), **settings)
