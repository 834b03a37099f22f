"""A streamed response that gives back what its stream held (a place under a cap) once it ends, however it ends."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class _Prepended:
    """`first`, then what `rest` yields: without a generator of its own in between, so that each chunk of a long
    stream passes through no extra frame."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> _Prepended:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        if self._first is None:
            return self._rest.__anext__()
        first, self._first = self._first, None
        return _ready(first)


async def _ready(chunk: bytes) -> bytes:
    return chunk


class HeldStreamingResponse(StreamingResponse):
    """Streams `first`, then `rest`; when the response is over (the stream ended, the client left, the server
    stops), runs `release` and closes `rest`: at once, never left to the garbage collector, and also when the
    client left before the stream even began (a generator never started runs no `finally`)."""

    def __init__(
        self,
        first: bytes,
        rest: AsyncGenerator[bytes, None],
        *,
        release: Callable[[], None],
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._rest = rest
        self._release = release
        super().__init__(_Prepended(first, rest), media_type=media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            await self._rest.aclose()
