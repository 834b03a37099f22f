"""A named TCP proxy on 127.0.0.1 that can be switched down and up: the outage injector of the fault tests.

Up, it forwards every connection to its target byte for byte. `down()` cuts every open connection at once and
closes each new one as soon as it is accepted (the port keeps listening, so no other process can take it), as a
dependency that crashed and is restarting looks to its clients; `up()` forwards again. `stall()` keeps every
connection open but forwards nothing (a hung dependency, a network partition that drops packets) until `resume()`.
`answer(status)` cuts open connections and answers each new HTTP request itself with that status (a load balancer
in front of a dependency that is gone), until `up()`. The proxy runs its own
event loop in a daemon thread, so a test can drive it from any thread or loop (a module-scoped fixture, an async
test, a sync one).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from tests.support.stack.proxy_base import CONTROL_TIMEOUT, ThreadedProxy

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024

_T = TypeVar("_T")


def _abort(writer: asyncio.StreamWriter) -> None:
    # abort(), not close(): nothing buffered is flushed, the connection ends now.
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    """Copy one direction until EOF or a cut, holding bytes while stalled; pass the EOF on (the other direction may
    still be talking)."""
    try:
        while data := await reader.read(_CHUNK):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError):
        # A reset on one side is passed on as a reset: a peer killed mid-transaction must not leave the other
        # side's connection (a PostgreSQL backend holding row locks) open behind the proxy.
        _abort(writer)


class TcpProxy(ThreadedProxy):
    """Forwards host:port (a free port, see `port`) to target_host:target_port until switched down."""

    def __init__(self, target_host: str, target_port: int, *, name: str, host: str = "127.0.0.1") -> None:
        super().__init__(target_host, target_port, name=name, host=host)
        self._up = True
        self._status: int | None = None
        self._flowing: asyncio.Event | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        # What the outages did: connections cut by down(), connections closed on arrival while down.
        self.cut = 0
        self.refused = 0
        self.answered = 0

    def __repr__(self) -> str:
        state = "up" if self._up else "down"
        return f"TcpProxy({self.name!r}, :{self._port} -> {self.target_host}:{self.target_port}, {state})"

    @property
    def is_up(self) -> bool:
        """Whether connections are forwarded."""
        return self._up

    def down(self) -> int:
        """Start an outage: cut every open connection and close new ones on arrival. Returns how many were cut."""
        cut = self._call(self._go_down())
        log.warning("proxy %s down: %d connection(s) cut", self.name, cut)
        return cut

    def up(self) -> None:
        """End the outage: forward new connections again."""
        self._status = None
        self._up = True
        log.warning("proxy %s up", self.name)

    def stall(self) -> None:
        """Forward nothing, in either direction, on any connection (they stay open) until `resume()`."""
        self._call(self._set_flowing(False))
        log.warning("proxy %s stalled", self.name)

    def resume(self) -> None:
        """Forward what was held and everything after it."""
        self._call(self._set_flowing(True))
        log.warning("proxy %s resumed", self.name)

    def answer(self, status: int) -> int:
        """Cut every open connection, then answer each new HTTP request with `status` (and `Retry-After: 1`)
        without forwarding it, until `up()`. Returns how many connections were cut."""
        cut = self._call(self._go_down())
        self._status = status
        log.warning("proxy %s answers %d: %d connection(s) cut", self.name, status, cut)
        return cut

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await super()._listen()

    async def _go_down(self) -> int:
        self._up = False
        pairs = list(self._open)
        for client, upstream in pairs:
            _abort(client)
            _abort(upstream)
        self.cut += len(pairs)
        return len(pairs)

    async def _cut_open_connections(self) -> None:
        await self._go_down()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self._status is not None:
            await self._answer(client_reader, client, self._status)
            return
        if not self._up:
            self.refused += 1
            _abort(client)
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self._target)
        except OSError:
            _abort(client)
            return
        if not self._up:
            # Went down while this connection was being made.
            self.refused += 1
            _abort(client)
            _abort(upstream)
            return
        pair = (client, upstream)
        self._open.add(pair)
        assert self._flowing is not None
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream, self._flowing), _pipe(upstream_reader, client, self._flowing)
            )
        finally:
            self._open.discard(pair)
            _abort(client)
            _abort(upstream)

    async def _answer(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, status: int) -> None:
        """Read one request head and answer it with `status`, no body, then close."""
        self.answered += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONTROL_TIMEOUT)
            client.write(
                f"HTTP/1.1 {status} Proxy Answer\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await client.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            client.close()
