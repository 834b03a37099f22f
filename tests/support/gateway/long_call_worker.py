"""A real HTTP worker whose calls take time: sync calls kept in a 303 chain (as Modal answers a web call past 150 s),
a body sent slowly, async jobs whose polls honour `?wait=` (as gpu.serve.server and the Modal result endpoint) or
not."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.support.gateway.fakes import png_bytes

# The query parameter Modal's redirect carries (a same-origin URL naming the running call).
MODAL_CALL_PARAMETER = "__modal_function_call_id"
# A slow body comes in pieces this small, each well within a read timeout.
TRICKLE_PIECE_BYTES = 16


@dataclass(frozen=True)
class Seen:
    """One request the worker got: method, path with query, when (time.monotonic)."""

    method: str
    path: str
    at: float


def success_body(request: dict[str, object]) -> bytes:
    """A contract success for `request`: a PNG of its size, its request id."""
    width, height = int(str(request.get("width", 64))), int(str(request.get("height", 64)))
    return json.dumps(
        {
            "image_base64": base64.b64encode(png_bytes(width, height)).decode(),
            "generation_time_seconds": 0.01,
            "model_info": {"base_model": "long-call", "lora_applied": False, "lora_scale": 1.0},
            "request_id": request.get("request_id"),
        }
    ).encode()


class LongCallWorker:
    """POST /generate: a call answered after `hops` redirects (None: never), each held `hop_seconds`, or, with
    `trickle_seconds`, a 200 whose body comes a byte at a time over that long. POST /jobs: a job that ends
    `job_seconds` after its submit; GET /jobs/{id} holds its answer up to `?wait=` when `honours_wait`."""

    def __init__(
        self,
        *,
        hops: int | None = 0,
        hop_seconds: float = 0.0,
        trickle_seconds: float = 0.0,
        job_seconds: float = 0.0,
        honours_wait: bool = True,
    ) -> None:
        self.hops, self.hop_seconds, self.trickle_seconds = hops, hop_seconds, trickle_seconds
        self.job_seconds, self.honours_wait = job_seconds, honours_wait
        self.seen: list[Seen] = []
        self._calls: dict[str, tuple[dict[str, object], int]] = {}  # call id → (its request, redirects so far)
        self._jobs: dict[str, tuple[dict[str, object], float]] = {}  # call id → (its request, when it ends)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # Checked for shutdown every 50 ms (the default 0.5 s would add that to every test).
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="long-call-worker", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, method: str, path: str) -> int:
        """Requests of `method` whose path (without the query) is `path`."""
        return sum(1 for s in self.seen if s.method == method and urlsplit(s.path).path == path)

    def __enter__(self) -> LongCallWorker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()  # held answers end now
        self._server.shutdown()
        self._server.server_close()

    def _hold(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _next_hop(self, call_id: str) -> bool:
        """Count a redirect of the call; whether it is still running (one more redirect to answer)."""
        with self._lock:
            request, hops = self._calls[call_id]
            if self.hops is not None and hops >= self.hops:
                return False
            self._calls[call_id] = (request, hops + 1)
            return True

    def _handler_class(self) -> Callable[..., BaseHTTPRequestHandler]:
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _reply(self, status: int, payload: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _trickle(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                pieces = range(0, len(payload), TRICKLE_PIECE_BYTES)
                for start in pieces:
                    self.wfile.write(payload[start : start + TRICKLE_PIECE_BYTES])
                    self.wfile.flush()
                    worker._hold(worker.trickle_seconds / len(pieces))

            def _answer_call(self, call_id: str) -> None:
                worker._hold(worker.hop_seconds)
                if worker._next_hop(call_id):
                    self._reply(303, Location=f"/generate?{MODAL_CALL_PARAMETER}={call_id}")
                    return
                request, _ = worker._calls[call_id]
                if worker.trickle_seconds:
                    self._trickle(success_body(request))
                else:
                    self._reply(200, success_body(request))

            def _see(self) -> tuple[str, dict[str, list[str]]]:
                worker.seen.append(Seen(self.command, self.path, time.monotonic()))
                parts = urlsplit(self.path)
                return parts.path, parse_qs(parts.query)

            def do_POST(self) -> None:
                path, _ = self._see()
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                call_id = f"fc-{next(worker._ids)}"
                if path == "/generate":
                    worker._calls[call_id] = (request, 0)
                    self._answer_call(call_id)
                elif path == "/jobs":
                    worker._jobs[call_id] = (request, time.monotonic() + worker.job_seconds)
                    self._reply(202, json.dumps({"call_id": call_id}).encode())
                else:
                    self._reply(404)

            def do_GET(self) -> None:
                path, query = self._see()
                if path == "/generate" and query.get(MODAL_CALL_PARAMETER, [""])[0] in worker._calls:
                    self._answer_call(query[MODAL_CALL_PARAMETER][0])
                    return
                call_id = path.removeprefix("/jobs/")
                if call_id not in worker._jobs:
                    self._reply(404, b'{"detail": "unknown or expired call_id"}')
                    return
                request, ends_at = worker._jobs[call_id]
                wait = float(query.get("wait", ["0"])[0]) if worker.honours_wait else 0.0
                left = ends_at - time.monotonic()
                if 0 < left <= wait:
                    worker._hold(left)
                elif left > 0:
                    worker._hold(wait)
                if time.monotonic() < ends_at:
                    self._reply(202, json.dumps({"call_id": call_id, "status": "running"}).encode())
                    return
                self._reply(200, success_body(request))

            def do_DELETE(self) -> None:
                path, _ = self._see()
                call_id = path.removeprefix("/jobs/")
                self._reply(202, json.dumps({"call_id": call_id, "status": "canceling"}).encode())

        return Handler
