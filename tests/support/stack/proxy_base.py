"""What the test proxies share: a listening socket on 127.0.0.1 served by an event loop in a daemon thread, driven
from any thread (start, stop, a coroutine run on its loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 10.0
_T = TypeVar("_T")


class ThreadedProxy:
    """Listens on host and a free port (see `port`) for target_host:target_port; subclasses serve connections."""

    def __init__(self, target_host: str, target_port: int, *, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.target_host = target_host
        self.target_port = target_port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise RuntimeError(f"proxy {self.name} is not started")
        return self._port

    @property
    def _target(self) -> tuple[str, int]:
        return self.target_host, self.target_port

    def start(self) -> Self:
        """Listen on a free port and forward (returns once listening)."""
        if self._thread is not None:
            raise RuntimeError(f"proxy {self.name} is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()
        self._call(self._listen())
        log.info("proxy %s listening on %s:%d -> %s:%d", self.name, self.host, self.port, *self._target)
        return self

    def stop(self) -> None:
        """Cut every connection, stop listening and end the thread."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CONTROL_TIMEOUT)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the proxy's loop and wait for its result (from any other thread)."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError(f"proxy {self.name} is not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=CONTROL_TIMEOUT)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _cut_open_connections(self) -> None:
        """Abort what is open (the subclass knows its connections)."""

    async def _close(self) -> None:
        await self._cut_open_connections()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), CONTROL_TIMEOUT)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
