"""Many Server-Sent Event streams over raw sockets, opened as an attacker (or a crowd of browsers) would: for the
stream-flood security test and the stream benchmark. One socket and a few hundred bytes of state per stream, so that
thousands fit in the client process beside the server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# How long one request may take to be answered (headers) before the client counts it as failed.
ANSWER_TIMEOUT = 60.0


@dataclass
class Answer:
    """What the server said to one request: its status and headers, and the body of an answer that is not a stream
    (read whole; the connection is then closed)."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    error: str | None = None  # the request got no answer at all (refused connection, reset, timeout)


@dataclass
class OpenStream:
    """A stream the server accepted (200, text/event-stream): its socket, and the events read so far."""

    answer: Answer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    event_ids: list[str] = field(default_factory=list)
    ended: bool = False
    _pending: str = ""

    async def next_event_id(self) -> str | None:
        """The id of the next event (comments and retry hints skipped); None once the server ended the stream."""
        while True:
            block, separator, rest = self._pending.partition("\n\n")
            if separator:
                self._pending = rest
                ids = [line[3:].strip() for line in block.split("\n") if line.startswith("id:")]
                if ids:
                    self.event_ids.append(ids[0])
                    return ids[0]
                continue
            chunk = await self._chunk()
            if not chunk:
                self.ended = True
                return None
            self._pending += chunk.decode()

    async def until_event(self, event_id: str) -> bool:
        """Read until the event `event_id` (True) or the stream's end (False)."""
        if event_id in self.event_ids:
            return True
        while (seen := await self.next_event_id()) is not None:
            if seen == event_id:
                return True
        return False

    async def _chunk(self) -> bytes:
        # uvicorn sends a stream with chunked transfer coding: "<hex size>\r\n<data>\r\n", then "0\r\n\r\n".
        try:
            size_line = await self.reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await self.reader.readuntil(b"\r\n")
            return b""
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    def close(self) -> None:
        self.writer.close()


def _request(host: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Accept: text/event-stream", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_stream(
    base_url: str, path: str, headers: Mapping[str, str] | None = None, answer_within: float = ANSWER_TIMEOUT
) -> OpenStream | Answer:
    """GET `path` as an SSE client: an OpenStream when the server answered 200 with a stream, else its Answer (one
    that did not come within `answer_within` seconds is an Answer with an error: a failure to count, not to raise)."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    try:
        async with asyncio.timeout(answer_within):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
            writer.write(_request(f"{host}:{port}", path, headers or {}))
            head = await reader.readuntil(b"\r\n\r\n")
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        return Answer(0, {}, error=type(error).__name__)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    answer_headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    if status == 200 and answer_headers.get("content-type", "").startswith("text/event-stream"):
        return OpenStream(Answer(status, answer_headers), reader, writer)
    try:
        async with asyncio.timeout(answer_within):
            body = await reader.read()  # Connection: close: the body ends with the connection
    except (OSError, TimeoutError):
        body = b""
    writer.close()
    return Answer(status, answer_headers, body)


async def open_many(
    base_url: str,
    path: str,
    count: int,
    *,
    headers: Mapping[str, str] | None = None,
    concurrency: int = 200,
    per_second: float | None = None,
) -> tuple[list[OpenStream], list[Answer]]:
    """Open `count` streams of `path`, `concurrency` requests at a time, and at most `per_second` requests begun a
    second (None: as fast as they are answered): the streams opened, and every other answer (refusals, errors)."""
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    begun = loop.time()

    async def one(index: int) -> OpenStream | Answer:
        if per_second is not None:
            await asyncio.sleep(max(0.0, begun + index / per_second - loop.time()))  # paced by the clock
        async with gate:
            return await open_stream(base_url, path, headers)

    results = await asyncio.gather(*(one(index) for index in range(count)))
    opened = [result for result in results if isinstance(result, OpenStream)]
    refused = [result for result in results if isinstance(result, Answer)]
    return opened, refused


async def all_reach(streams: Sequence[OpenStream], event_id: str) -> int:
    """Read every stream until its event `event_id`; how many reached it (the others ended before)."""
    reached = await asyncio.gather(*(stream.until_event(event_id) for stream in streams))
    return sum(reached)


def close_all(streams: Sequence[OpenStream]) -> None:
    for stream in streams:
        stream.close()
