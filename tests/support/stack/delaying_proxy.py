"""An HTTP/1.1-aware TCP proxy on 127.0.0.1 that holds chosen requests before it forwards them: the delay injector of
the expired-URL tests (a worker that fetches its LoRA only after the presigned URL has expired).

Every byte goes on unchanged (request line, headers, bodies, answers), so a SigV4 signature made for the proxy's
host:port stays valid at the S3 endpoint behind it. The proxy reads each request's head to decide, with `hold`, how
many seconds to wait before forwarding it, and each answer's head and first bytes to record what came back
(`exchanges`). One request at a time per connection (no pipelining, as httpx and botocore send them); bodies framed
by Content-Length or chunked; `Expect: 100-continue` passes through. The upstream connection is opened only once the
first request of a client connection has been held, so a long hold never leaves an idle connection for the endpoint
to time out. It runs its own event loop in a daemon thread (as tests/support/stack/tcp_proxy.py does), so a test can
drive it from any thread or loop.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from tests.support.stack.proxy_base import ThreadedProxy

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024

# How much of each answer's body is kept in its record (an S3 error document fits).
BODY_KEPT_BYTES = 4096
_T = TypeVar("_T")


@dataclass(frozen=True)
class RequestHead:
    """The request line and headers of one request (header names lowercased)."""

    method: str
    target: str
    headers: dict[str, str] = field(repr=False)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """The query's parameters (the first value of each)."""
        return {name: values[0] for name, values in parse_qs(urlsplit(self.target).query).items()}


@dataclass
class Exchange:
    """One request and what the upstream answered to it (`status` None: no answer came)."""

    request: RequestHead
    received_at: float  # time.time() when its head arrived
    held_seconds: float = 0.0
    forwarded_at: float | None = None  # time.time() when it went upstream
    status: int | None = None
    body: bytes = b""  # the first BODY_KEPT_BYTES of the answer's body


# Seconds to hold a request before forwarding it (0 or less: at once). Called on the proxy's loop, one request at
# a time, in the order they arrive.
Hold = Callable[[RequestHead], float]


def presigned_expiry(request: RequestHead) -> float | None:
    """When a SigV4 presigned URL stops being valid (epoch seconds: X-Amz-Date + X-Amz-Expires), or None when the
    request carries no such query."""
    query = request.query
    try:
        signed = time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        return calendar.timegm(signed) + int(query["X-Amz-Expires"])
    except (KeyError, ValueError):
        return None


class HoldFirstUntilExpired:
    """A `Hold`: the first GET of a presigned URL under `path_prefix` is held until `margin_seconds` after the URL
    has expired (computed from its query, not a fixed sleep); every other request goes on at once."""

    def __init__(self, path_prefix: str, margin_seconds: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.path_prefix = path_prefix
        self.margin_seconds = margin_seconds
        self._clock = clock
        self.held: RequestHead | None = None

    def __call__(self, request: RequestHead) -> float:
        if self.held is not None or request.method != "GET" or not request.path.startswith(self.path_prefix):
            return 0.0
        expiry = presigned_expiry(request)
        if expiry is None:
            return 0.0
        self.held = request
        return expiry + self.margin_seconds - self._clock()


class _Framing:
    """How a message's body ends: after `length` bytes, chunked, at EOF, or there is none (length 0)."""

    def __init__(self, length: int | None = 0, chunked: bool = False) -> None:
        self.length = length  # None: until EOF
        self.chunked = chunked


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _request_framing(headers: dict[str, str]) -> _Framing:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _Framing(chunked=True)
    return _Framing(int(headers.get("content-length", "0") or 0))


def _response_framing(method: str, status: int, headers: dict[str, str]) -> _Framing:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return _Framing(0)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _Framing(chunked=True)
    if "content-length" in headers:
        return _Framing(int(headers["content-length"]))
    return _Framing(None)


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next message head, through its blank line; None when the peer closed before sending one."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise
        return None


async def _copy_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: _Framing,
    keep: Callable[[bytes], None] = lambda _: None,
) -> None:
    """Forward one message body as it is framed, handing its bytes (chunk framing included) to `keep`."""

    async def forward(data: bytes) -> None:
        keep(data)
        writer.write(data)
        await writer.drain()

    if framing.chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            await forward(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    await forward(trailer)
                await forward(b"\r\n")
                return
            await forward(await reader.readexactly(size + 2))
    if framing.length is None:
        while data := await reader.read(_CHUNK):
            await forward(data)
        return
    left = framing.length
    while left > 0:
        data = await reader.read(min(left, _CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(data)
        await forward(data)


class DelayingProxy(ThreadedProxy):
    """Forwards host:port (a free port, see `port`) to target_host:target_port, holding the requests `hold` picks;
    `exchanges` records every request and its answer."""

    def __init__(self, target_host: str, target_port: int, *, hold: Hold, name: str, host: str = "127.0.0.1") -> None:
        super().__init__(target_host, target_port, name=name, host=host)
        self._hold = hold
        self._open: set[asyncio.StreamWriter] = set()
        self._exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DelayingProxy({self.name!r}, :{self._port} -> {self.target_host}:{self.target_port})"

    @property
    def url(self) -> str:
        """http://host:port of the proxy."""
        return f"http://{self.host}:{self.port}"

    @property
    def exchanges(self) -> list[Exchange]:
        """Every request so far, in arrival order, with what was answered (a copy)."""
        with self._lock:
            return list(self._exchanges)

    async def _cut_open_connections(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        answers: asyncio.Task[None] | None = None
        pending: asyncio.Queue[Exchange | None] = asyncio.Queue()
        self._open.add(client)
        try:
            while (head := await _read_head(client_reader)) is not None:
                line, *header_lines = head[:-4].split(b"\r\n")
                method, target, _ = line.decode("latin-1").split(" ", 2)
                request = RequestHead(method, target, _parse_headers(header_lines))
                exchange = Exchange(request, received_at=time.time())
                with self._lock:
                    self._exchanges.append(exchange)
                seconds = self._hold(request)
                if seconds > 0:
                    exchange.held_seconds = seconds
                    log.warning("proxy %s holds %s %s for %.1fs", self.name, method, request.path, seconds)
                    await asyncio.sleep(seconds)
                if upstream is None:
                    upstream_reader, upstream = await asyncio.open_connection(*self._target)
                    self._open.add(upstream)
                    answers = asyncio.create_task(self._answers(upstream_reader, client, pending))
                exchange.forwarded_at = time.time()
                await pending.put(exchange)
                upstream.write(head)
                await upstream.drain()
                await _copy_body(client_reader, upstream, _request_framing(request.headers))
            await pending.put(None)
            if answers is not None:
                await answers
        except (ConnectionError, OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a peer went away or spoke something else: the connection ends, as a plain proxy's would
        finally:
            if answers is not None and not answers.done():
                answers.cancel()
                with contextlib.suppress(BaseException):
                    await answers
            for writer in (client, upstream):
                if writer is not None:
                    self._open.discard(writer)
                    writer.transport.abort()

    async def _answers(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, pending: asyncio.Queue[Exchange | None]
    ) -> None:
        """Forward the upstream's answers, one per request forwarded, recording each. When the upstream ends its
        connection, the client's ends too (it must not send another request into a closed one)."""
        try:
            while (exchange := await pending.get()) is not None:
                if not await self._answer(reader, client, exchange):
                    break
            else:
                return  # the client is done: _serve ends both connections
        except (ConnectionError, OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        client.transport.abort()

    async def _answer(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, exchange: Exchange) -> bool:
        """Forward one answer (after any interim 1xx) and record it; whether the upstream connection stays open."""
        while True:
            head = await _read_head(reader)
            if head is None:
                return False
            line, *header_lines = head[:-4].split(b"\r\n")
            status = int(line.split(b" ", 2)[1])
            client.write(head)
            await client.drain()
            if not 100 <= status < 200:
                break  # an interim answer (100 Continue) comes before the final one
        exchange.status = status
        framing = _response_framing(exchange.request.method, status, _parse_headers(header_lines))

        def keep(data: bytes) -> None:
            room = BODY_KEPT_BYTES - len(exchange.body)
            if room > 0:
                exchange.body += data[:room]

        await _copy_body(reader, client, framing, keep)
        return framing.length is not None
