"""A loopback JWKS endpoint for auth tests: publish keys, count fetches, fail or stall on demand."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.auth_tokens import SigningKey, jwks_body

PATH = "/jwks.json"


class JwksServer:
    """Serves the published keys on http://127.0.0.1:<free port>/jwks.json; `fetches` counts requests."""

    def __init__(self) -> None:
        self.body = jwks_body()
        self.status = 200
        self.fetches = 0
        self._stall = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{PATH}"

    def publish(self, *keys: SigningKey) -> None:
        """Answer 200 with these keys from now on."""
        self.body, self.status, self._stall = jwks_body(*keys), 200, False

    def fail(self, status: int = 503, body: bytes = b"unavailable") -> None:
        """Answer `status` with `body` from now on."""
        self.body, self.status, self._stall = body, status, False

    def stall(self) -> None:
        """Accept requests but never answer them (until the server stops)."""
        self._stall = True

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                with server._lock:
                    server.fetches += 1
                if server._stall:
                    server._release.wait()
                    return
                if self.path != PATH:
                    self.send_error(404)
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

        return Handler
