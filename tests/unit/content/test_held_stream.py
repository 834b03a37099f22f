"""HeldStreamingResponse gives back what its stream held however the response ends: the stream's end, a client that
leaves in the middle, one that left before the first byte. Called as the server calls it (ASGI)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message

from services.content.held_stream import HeldStreamingResponse

GUARD = 5.0
SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "GET"}


class Held:
    """A place under a cap, and a stream that remembers whether it was closed."""

    def __init__(self) -> None:
        self.released = 0
        self.closed = False
        self.forever = asyncio.Event()

    def release(self) -> None:
        self.released += 1

    async def stream(self, chunks: int | None) -> AsyncGenerator[bytes, None]:
        try:
            yield b"first"
            sent = 1
            while chunks is None or sent < chunks:
                if chunks is None:
                    await self.forever.wait()
                yield b"more"
                sent += 1
        finally:
            self.closed = True

    async def response(self, chunks: int | None) -> HeldStreamingResponse:
        rest = self.stream(chunks)
        first = await anext(rest)  # as the route does: the first chunk before answering
        return HeldStreamingResponse(first, rest, release=self.release, media_type="text/event-stream")


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def test_a_stream_that_ends_releases_once_and_sends_everything() -> None:
    held = Held()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async with asyncio.timeout(GUARD):
        await (await held.response(3))(SCOPE, _never_disconnects, send)

    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"first", b"more", b"more", b""]
    assert (held.released, held.closed) == (1, True)


async def test_a_client_that_leaves_in_the_middle_releases_and_closes_the_stream() -> None:
    held = Held()
    body_sent = asyncio.Event()
    disconnect = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            body_sent.set()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    response = await held.response(None)  # an open generation: only the client's leaving ends it
    async with asyncio.timeout(GUARD):
        serving = asyncio.create_task(response(SCOPE, receive, send))
        await body_sent.wait()
        disconnect.set()
        await serving

    assert (held.released, held.closed) == (1, True)


async def test_a_client_gone_before_the_first_byte_still_releases_and_closes_the_stream() -> None:
    held = Held()

    async def send(_message: Message) -> None:
        raise OSError("the connection is gone")

    response = await held.response(None)
    async with asyncio.timeout(GUARD):
        with pytest.raises(ClientDisconnect):
            await response({**SCOPE, "asgi": {"version": "3.0", "spec_version": "2.4"}}, _never_disconnects, send)

    assert (held.released, held.closed) == (1, True)
