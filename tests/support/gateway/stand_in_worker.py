"""A stand-in for the worker's HTTP endpoint that injects one named fault, counting the calls it gets."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.gateway.fakes import png_bytes

Answer = tuple[int, str, bytes]


def _success(png: bytes, request_id: str | None) -> bytes:
    return json.dumps(
        {
            "image_base64": base64.b64encode(png).decode(),
            "generation_time_seconds": 0.01,
            "model_info": {"base_model": "stand-in", "lora_applied": False, "lora_scale": 1.0},
            "request_id": request_id,
        }
    ).encode()


def _contract_error(http: int, code: str, error: str, **details: object) -> Answer:
    return http, "application/json", json.dumps({"error": error, "error_code": code, "details": details}).encode()


# What the real worker answers (gpu/engine/lora/download.py, gpu/engine/lora/store.py) for an expired URL and a wrong
# sha256.
LORA_URL_EXPIRED = _contract_error(
    424,
    "LORA_DOWNLOAD_FAILED",
    "LoRA download failed: access denied (expired or invalid signature)",
    host="127.0.0.1",
    status=403,
    http_status=403,
)
LORA_SHA_MISMATCH = _contract_error(
    424,
    "LORA_DOWNLOAD_FAILED",
    "LoRA sha256 does not match lora_sha256",
    expected="ab" * 32,
    actual="cd" * 32,
    reason="sha256_mismatch",
)


def _answer(fault: str, body: dict[str, object], call: int = 1) -> Answer:
    raw_id = body.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) else None
    width, height = int(str(body.get("width", 64))), int(str(body.get("height", 64)))
    json_type = "application/json"
    if fault == "ok":
        return 200, json_type, _success(png_bytes(width, height), request_id)
    if fault == "garbage-body":
        return 200, "text/plain", b"\x00\x01 definitely not JSON \xff"
    if fault == "wrong-size-png":
        return 200, json_type, _success(png_bytes(width // 2, height), request_id)
    if fault == "not-a-png":
        fake = json.loads(_success(b"", request_id))
        fake["image_base64"] = base64.b64encode(b"GIF89a this is no PNG").decode()
        return 200, json_type, json.dumps(fake).encode()
    if fault == "html-502":
        return 502, "text/html", b"<html><body>502 Bad Gateway</body></html>"
    if fault == "lora-url-expired-then-ok":
        return LORA_URL_EXPIRED if call == 1 else _answer("ok", body)
    if fault == "lora-url-expired":
        return LORA_URL_EXPIRED
    if fault == "lora-sha-mismatch":
        return LORA_SHA_MISMATCH
    if fault == "contract-cuda-oom":
        error = {"error": "CUDA out of memory", "error_code": "CUDA_OOM", "details": {}}
        return 503, json_type, json.dumps(error).encode()
    raise ValueError(f"unknown fault {fault!r}")


ANSWER_FAULTS = (
    "ok",
    "garbage-body",
    "wrong-size-png",
    "not-a-png",
    "html-502",
    "contract-cuda-oom",
    "lora-url-expired-then-ok",
    "lora-url-expired",
    "lora-sha-mismatch",
)
# POST /generate answers a redirect to `redirect_to` (another origin), or to its own /result (same origin), where
# GET answers "ok": 303 (the method becomes GET, the body is dropped) or 307 (method and body kept).
REDIRECT_FAULTS = ("redirect-303", "redirect-307")
FAULTS = ANSWER_FAULTS + REDIRECT_FAULTS


class StandInWorker:
    """POST /generate answers with the fault named at construction; `bodies` holds what it was sent, `requests`
    (method, path, headers) every request it got, GETs included."""

    def __init__(self, fault: str, redirect_to: str | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self.fault = fault
        self.redirect_to = redirect_to
        self.bodies: list[dict[str, object]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def calls(self) -> int:
        return len(self.bodies)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/generate"

    def start(self) -> StandInWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> Callable[..., BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _reply(self, status: int, content_type: str, payload: bytes, **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                stand_in.requests.append(("GET", self.path, dict(self.headers.items())))
                self._reply(*_answer("ok", {}))

            def do_POST(self) -> None:
                stand_in.requests.append(("POST", self.path, dict(self.headers.items())))
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                stand_in.bodies.append(body)
                if stand_in.fault in REDIRECT_FAULTS and self.path == "/generate":
                    status = 303 if stand_in.fault == "redirect-303" else 307
                    self._reply(status, "text/plain", b"", Location=stand_in.redirect_to or "/result")
                    return
                self._reply(*_answer(stand_in.fault, body, len(stand_in.bodies)))

        return Handler
