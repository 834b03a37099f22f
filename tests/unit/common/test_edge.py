"""The edge's body limits as an ASGI middleware over a real FastAPI app: each route's cap comes from the app's own
OpenAPI account of its routes, a body is counted as it arrives, and a refusal replaces whatever the app answered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from services.common.http.edge import (
    NO_BODY_BYTES,
    EdgeLimits,
    EdgeLimitsMiddleware,
    body_cap,
    body_routes,
    declared_length,
)
from services.common.http.errors import install_error_handlers

LIMITS = EdgeLimits(max_body_bytes=1024, body_timeout_seconds=0.2)


class Note(BaseModel):
    text: str


def app_under_test() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    seen: list[str] = []
    app.state.seen = seen

    @app.post("/notes/{note_id}")
    async def post_note(note_id: str, note: Note) -> dict[str, str]:
        seen.append(note.text)
        return {"id": note_id}

    @app.get("/notes")
    async def list_notes() -> list[str]:
        return seen

    app.add_middleware(EdgeLimitsMiddleware, limits=LIMITS)
    return app


def scope_of(app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "state": {},
    }


async def call(
    app: FastAPI, method: str, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]], *, hang: bool = False
) -> tuple[int, dict[str, str], Any, int]:
    """Drive the app as a server would: the body arrives in `chunks` (then nothing, when `hang`); (status,
    headers, JSON body, chunks the app took)."""
    pieces: Iterator[bytes] = iter(chunks)
    taken = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal taken
        piece = next(pieces, None)
        if piece is None:
            if hang:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        taken += 1
        return {"type": "http.request", "body": piece, "more_body": taken < len(chunks) or hang}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope_of(app, method, path, headers), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, json.loads(body), taken


JSON = (b"content-type", b"application/json")
CHUNKED = (b"transfer-encoding", b"chunked")


async def test_a_body_under_its_routes_cap_reaches_the_app() -> None:
    app = app_under_test()
    body = json.dumps({"text": "hello"}).encode()
    status, _, answer, _ = await call(app, "POST", "/notes/n1", [body], [JSON, (b"content-length", b"%d" % len(body))])
    assert (status, answer) == (200, {"id": "n1"}) and app.state.seen == ["hello"]


async def test_a_declared_length_over_the_cap_is_refused_before_the_app_reads_anything() -> None:
    app = app_under_test()
    status, headers, answer, taken = await call(app, "POST", "/notes/n1", [b"x"], [JSON, (b"content-length", b"2048")])
    assert (status, answer["error_code"], headers["connection"], taken) == (413, "BODY_TOO_LARGE", "close", 0)
    assert app.state.seen == []


async def test_a_streamed_body_is_refused_at_the_chunk_that_passes_the_cap() -> None:
    app = app_under_test()
    chunks = [b'{"text": "' + b"a" * 400, b"a" * 400, b"a" * 400, b"a" * 400, b'"}']
    status, _, answer, taken = await call(app, "POST", "/notes/n1", chunks, [JSON, CHUNKED])
    assert (status, answer["error_code"], taken) == (413, "BODY_TOO_LARGE", 3)
    assert app.state.seen == []


async def test_a_route_without_a_body_takes_a_few_hundred_bytes_at_most() -> None:
    app = app_under_test()
    status, _, answer, _ = await call(app, "GET", "/notes", [b"a" * 600], [(b"content-length", b"600")])
    assert (status, answer["error_code"]) == (413, "BODY_TOO_LARGE")
    assert str(NO_BODY_BYTES) in answer["error"]


async def test_a_body_that_stops_arriving_is_cut_with_408() -> None:
    app = app_under_test()
    status, _, answer, _ = await call(app, "POST", "/notes/n1", [b'{"te'], [JSON, CHUNKED], hang=True)
    assert (status, answer["error_code"]) == (408, "REQUEST_TIMEOUT")


async def test_a_content_length_that_is_not_one_number_is_refused() -> None:
    app = app_under_test()
    headers = [JSON, (b"content-length", b"10"), (b"content-length", b"20")]
    status, _, answer, _ = await call(app, "POST", "/notes/n1", [b"{}"], headers)
    assert (status, answer["error_code"]) == (400, "INVALID_REQUEST")


def test_route_caps_come_from_the_apps_openapi_document() -> None:
    routes = body_routes(app_under_test().openapi())
    assert body_cap(routes, "POST", "/notes/anything", 1024) == 1024
    assert body_cap(routes, "POST", "/notes/a/b", 1024) == NO_BODY_BYTES
    assert body_cap(routes, "GET", "/notes", 1024) == NO_BODY_BYTES
    assert body_cap(routes, "POST", "/elsewhere", 1024) == NO_BODY_BYTES


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([b"12"], 12), ([b"12", b"12"], 12), ([b"-1"], -1), ([b"1e3"], -1), ([b"9" * 30], -1)],
)
def test_declared_length(values: list[bytes], expected: int | None) -> None:
    assert declared_length({"headers": [(b"content-length", v) for v in values]}) == expected
