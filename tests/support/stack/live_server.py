"""An app served by uvicorn over a real socket, in a thread of its own: for what ASGITransport cannot show (a
streamed response arriving piece by piece, uvicorn's access log) and for clients in another process (schemathesis).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from services.common.http.edge import EdgeLimits
from services.common.http.edge_protocol import server_config

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@contextlib.contextmanager
def live_server(app: FastAPI, name: str = "live-app", limits: EdgeLimits | None = None) -> Iterator[str]:
    """Serve `app` on a free port of 127.0.0.1 until the block ends; its base URL. The lifespan runs on the
    server thread's own event loop, so the app's background tasks never share the test's loop.

    Served as every service is (services.common.http.edge_protocol.server_config: its HTTP protocol and limits, and
    log_config=None: uvicorn's loggers propagate to the root logger)."""
    config = server_config(
        app, host="127.0.0.1", port=0, limits=limits or EdgeLimits(), lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    # uvicorn offers no event to wait on: its `started` flag is the condition, checked until the deadline.
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"{name} stopped while starting (see the log for its lifespan error)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"{name} did not start within {START_TIMEOUT:.0f}s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"{name} did not stop within {STOP_TIMEOUT:.0f}s")
