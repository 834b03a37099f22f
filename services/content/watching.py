"""Waiting on a generation: `Prefer: wait=N` and the Server-Sent Events stream, woken by change notices.

Both register their watch before the first read, so a change committed in between is not missed, and read the
database again only when a notice (or a reconnect of the notice listener) says something changed. Given a
SharedReads as `watches` and a read through it, every waiter of one generation shares that read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from services.content.changes import Watch
from services.content.decisions import StatusStep, is_terminal, status_steps
from services.content.reads import GenerationView

log = logging.getLogger(__name__)

ReadView = Callable[[], Awaitable[GenerationView]]
# JSON of one SSE event's data, from the view and the status step it reports.
EventData = Callable[[GenerationView, StatusStep], str]


class Watches(Protocol):
    """Where a waiter registers its watch of a key (a ChangeHub, or a SharedReads over one)."""

    def watch(self, key: str) -> contextlib.AbstractContextManager[Watch]: ...


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)(?:$|[,;\s])", re.I)


def preferred_wait(prefer: str | None, max_seconds: float) -> int | None:
    """The N of a `Prefer: wait=N` header (RFC 7240), capped at max_seconds; None when the header asks no wait."""
    if not prefer:
        return None
    match = _PREFER_WAIT.search(prefer)
    if match is None:
        return None
    # Any number of digits is a wait; a huge one is capped like any other over the maximum.
    return int(min(int(match.group(1)[:9]), max_seconds))


async def wait_until_terminal(watches: Watches, key: str, read: ReadView, seconds: float) -> GenerationView:
    """The generation once it is terminal, or as it stands when `seconds` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with watches.watch(key) as watch:
        view = await read()
        while not is_terminal(view.generation):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if await watch.changed(remaining):
                view = await read()
    return view


def last_event_step(last_event_id: str | None) -> int:
    """The status step a reconnecting client has already seen (0: none, or an id that is not ours)."""
    if last_event_id is None or not last_event_id.strip().isdigit():
        return 0
    return int(last_event_id.strip())


def sse_event(event: str, event_id: int, data: str) -> bytes:
    """One Server-Sent Event (data is one line of JSON, so one `data:` field holds it)."""
    return f"event: {event}\nid: {event_id}\ndata: {data}\n\n".encode()


HEARTBEAT = b": keep-alive\n\n"
RETRY_HINT = b"retry: 2000\n\n"
# A stream ends after this long even if the generation has not (CONTENT_STREAM_MAX_SECONDS): EventSource
# reconnects with Last-Event-ID, and no connection outlives a deploy by more than a few minutes.
MAX_STREAM_SECONDS = 300.0
# Streams opened together end spread over the last tenth of their lifetime, so they do not reconnect together.
LIFETIME_SPREAD = 0.1


def stream_lifetime(max_seconds: float, draw: Callable[[], float] = random.random) -> float:
    """How long one stream may stay open: max_seconds less up to a tenth, drawn (`draw` gives a number in [0, 1))."""
    return max_seconds * (1.0 - LIFETIME_SPREAD * draw())


async def generation_events(
    watches: Watches,
    key: str,
    read: ReadView,
    event_data: EventData,
    *,
    after_step: int,
    heartbeat_seconds: float,
    max_seconds: float = MAX_STREAM_SECONDS,
) -> AsyncGenerator[bytes, None]:
    """Each status the generation reaches after `after_step`, in order (queued, running, then its final status),
    a heartbeat comment while nothing changes, and the end of the stream after the final status (or after
    max_seconds: the client reconnects).

    The first read comes before the first chunk, so a caller that takes the first chunk before it answers learns
    a refusal of that read (404, 429) while it can still send it. A read that fails later ends the stream (the
    client reconnects with Last-Event-ID) instead of breaking the connection in the middle of an event."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + max_seconds
    with watches.watch(key) as watch:
        view = await read()
        sent = after_step
        # Tell the client how long to wait before reconnecting (the default is browser-specific).
        yield RETRY_HINT
        while True:
            for step in status_steps(view.generation):
                if step.step > sent:
                    yield sse_event("status", step.step, event_data(view, step))
                    sent = step.step
            if is_terminal(view.generation) or loop.time() >= ends:
                return
            if not await watch.changed(min(heartbeat_seconds, max(0.0, ends - loop.time()))):
                yield HEARTBEAT
            try:
                view = await read()
            except Exception as error:
                log.warning("generation %s: a stream's read failed (%s); ending the stream", key, type(error).__name__)
                return
