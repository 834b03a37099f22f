"""Limits at the edge, on a real socket, against content as it is served (its HTTP protocol, real PostgreSQL,
RabbitMQ and S3): nothing unauthenticated is read past its cap or its time, and an owner is served meanwhile.

Attacks found against the platform: a 100 MB body without a token read in full before the 401 (content 130 →
413 MB), a 50 MB header accepted with 200, a client holding a connection forever with one header line at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.common.http.edge import EdgeLimits
from services.content.main import create_app
from services.content.settings import ContentSettings
from tests.support.auth import bearer, new_owner
from tests.support.stack.live_server import live_server

MIB = 1024 * 1024
GENERATE = "/api/v1/content/generate"


@dataclass(frozen=True)
class Served:
    url: str
    host: str
    port: int


@pytest.fixture
def served(content_settings: ContentSettings) -> Iterator[Served]:
    """Content on a free port, with one-second deadlines for headers and bodies."""
    settings = content_settings.model_copy(
        update={"http_header_timeout_seconds": 1.0, "http_body_timeout_seconds": 1.0}
    )
    with live_server(create_app(settings), "content-edge", limits=EdgeLimits.from_settings(settings)) as url:
        parts = urlsplit(url)
        yield Served(url, parts.hostname or "127.0.0.1", parts.port or 80)


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection((served.host, served.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on the socket, read until the server closes it."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def flood(served: Served, total: int, head: bytes, *, chunked: bool = False) -> tuple[int, int | None]:
    """Send `head` then `total` bytes (as 256 KiB chunks of a chunked body, or raw) as fast as the server takes
    them; (bytes sent, status read, or None when the server reset the connection before its answer was read)."""
    sock = connect(served)
    sent = 0
    data = b"x" * (256 * 1024)
    piece = f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(piece)
            sent += len(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    try:
        status: int | None = read_response(sock)[0]
    except (IndexError, ValueError, OSError):
        status = None
    sock.close()
    return sent, status


def chunked_head(served: Served) -> bytes:
    return (
        f"POST {GENERATE} HTTP/1.1\r\nHost: {served.host}\r\ncontent-type: application/json\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    ).encode()


async def test_a_declared_huge_body_is_refused_before_any_of_it_is_read(served: Served) -> None:
    def attempt() -> tuple[int, dict[str, str], bytes]:
        with connect(served) as sock:
            sock.sendall(f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\ncontent-length: {100 * MIB}\r\n\r\n".encode())
            return read_response(sock)

    status, headers, body = await asyncio.to_thread(attempt)

    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "BODY_TOO_LARGE"


async def test_a_chunked_body_past_the_cap_is_refused_with_413(served: Served) -> None:
    def attempt() -> tuple[int, dict[str, str], bytes]:
        with connect(served) as sock:
            chunk = b"a" * (100 * 1024)
            sock.sendall(chunked_head(served) + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            return read_response(sock)

    status, _, body = await asyncio.to_thread(attempt)

    assert status == 413, body
    assert "65536 bytes" in json.loads(body)["error"]


async def test_three_100_mb_bodies_are_cut_short_while_an_owner_is_served(served: Served) -> None:
    auth = bearer(new_owner())
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:

        async def latencies(count: int) -> list[float]:
            seen = []
            for _ in range(count):
                started = time.perf_counter()
                health = await client.get("/healthz")
                limits = await client.get("/api/v1/content/limits", headers=auth)
                assert (health.status_code, limits.status_code) == (200, 200)
                seen.append(time.perf_counter() - started)
            return seen

        baseline = await latencies(20)
        rss_before = rss_mib()
        sized = f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\ncontent-length: {100 * MIB}\r\n\r\n".encode()
        floods = [
            asyncio.to_thread(flood, served, 100 * MIB, chunked_head(served), chunked=True),
            asyncio.to_thread(flood, served, 100 * MIB, chunked_head(served), chunked=True),
            asyncio.to_thread(flood, served, 100 * MIB, sized),
        ]
        during, *results = await asyncio.gather(latencies(40), *floods)
        rss_after = rss_mib()

    for sent, status in results:
        # Each was stopped within a few MiB (socket buffers), not read to its 100 MB.
        assert sent < 16 * MIB, sent
        assert status in (413, None), status
    assert rss_after - rss_before < 64, (rss_before, rss_after)
    p99 = statistics.quantiles(during, n=100)[98]
    assert p99 < max(0.25, 5 * statistics.median(baseline)), (statistics.median(baseline), p99)


async def test_a_header_block_over_the_cap_is_431_and_a_50_mb_one_is_never_read(served: Served) -> None:
    def big_header() -> tuple[int, dict[str, str], bytes]:
        with connect(served) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\nx-padding: {'a' * 40_000}\r\n\r\n".encode())
            return read_response(sock)

    status, headers, body = await asyncio.to_thread(big_header)
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "HEADERS_TOO_LARGE"

    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-padding: "
    sent, status_after_flood = await asyncio.to_thread(flood, served, 50 * MIB, head)
    assert sent < 16 * MIB and status_after_flood in (431, None)


async def test_headers_that_trickle_in_are_cut_at_their_deadline(served: Served) -> None:
    def slowloris() -> tuple[float, int]:
        with connect(served) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            stop = threading.Event()

            def trickle() -> None:
                while not stop.wait(0.2):
                    try:
                        sock.sendall(b"x-a: b\r\n")
                    except OSError:
                        return

            writer = threading.Thread(target=trickle, daemon=True)
            writer.start()
            try:
                status = read_response(sock)[0]
            finally:
                stop.set()
                writer.join()
            return time.monotonic() - started, status

    elapsed, status = await asyncio.to_thread(slowloris)

    assert status == 408 and elapsed < 5, elapsed


async def test_a_silent_connection_and_a_trickling_body_are_closed(served: Served) -> None:
    def silent() -> bytes:
        with connect(served) as sock:
            sock.settimeout(5)
            return sock.recv(65536) + sock.recv(65536)

    def slow_body() -> int:
        with connect(served) as sock:
            sock.sendall(f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{{".encode())
            return read_response(sock)[0]

    answer = await asyncio.to_thread(silent)
    assert b" 408 " in answer
    assert await asyncio.to_thread(slow_body) == 408
