"""A loopback HTTP server for LoRA files with scripted misbehaviour, counting the requests it answers."""

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What the server answers on one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Send the body in chunks of this size, sleeping between them (a slow or stalled server).
    chunk_bytes: int = 0
    chunk_delay_seconds: float = 0.0
    # Announce this Content-Length instead of the real one (0: the real one; -1: none).
    declared_length: int = 0


class FileServer:
    """Serves routes on 127.0.0.1:<free port>; `requests[path]` counts what was asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def add(self, path: str, route: Route | bytes) -> str:
        self.routes[path] = route if isinstance(route, Route) else Route(body=route)
        return self.url(path)

    def start(self) -> "FileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> Callable[..., BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests[path] += 1
                route = server.routes.get(path)
                if route is None:
                    self.send_error(404)
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.declared_length >= 0:
                    length = route.declared_length or len(route.body)
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                step = route.chunk_bytes or len(route.body) or 1
                try:
                    for start in range(0, len(route.body), step):
                        self.wfile.write(route.body[start : start + step])
                        self.wfile.flush()
                        server.bytes_sent[path] += min(step, len(route.body) - start)
                        if route.chunk_delay_seconds:
                            time.sleep(route.chunk_delay_seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up on purpose (cap, timeout)

        return Handler
