"""Waiting on a generation: `Prefer: wait=N` and the Server-Sent Events stream, woken by change notices.

Both register their watch before the first read, so a change committed in between is not missed, and read the
database again only when a notice (or a reconnect of the notice listener) says something changed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from services.common.changes import ChangeHub
from services.content.decisions import StatusStep, is_terminal, status_steps
from services.content.generations import GenerationView

ReadView = Callable[[], Awaitable[GenerationView]]
# JSON of one SSE event's data, from the view and the status step it reports.
EventData = Callable[[GenerationView, StatusStep], str]

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


async def wait_until_terminal(hub: ChangeHub, key: str, read: ReadView, seconds: float) -> GenerationView:
    """The generation once it is terminal, or as it stands when `seconds` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with hub.watch(key) as watch:
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
# A stream ends after this long even if the generation has not: EventSource reconnects with Last-Event-ID, and no
# connection outlives a deploy by more than a few minutes.
MAX_STREAM_SECONDS = 300.0


async def generation_events(
    hub: ChangeHub,
    key: str,
    read: ReadView,
    event_data: EventData,
    *,
    after_step: int,
    heartbeat_seconds: float,
    max_seconds: float = MAX_STREAM_SECONDS,
) -> AsyncIterator[bytes]:
    """Each status the generation reaches after `after_step`, in order (queued, running, then its final status),
    a heartbeat comment while nothing changes, and the end of the stream after the final status (or after
    max_seconds: the client reconnects)."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + max_seconds
    with hub.watch(key) as watch:
        sent = after_step
        # Tell the client how long to wait before reconnecting (the default is browser-specific).
        yield b"retry: 2000\n\n"
        while True:
            view = await read()
            for step in status_steps(view.generation):
                if step.step > sent:
                    yield sse_event("status", step.step, event_data(view, step))
                    sent = step.step
            if is_terminal(view.generation) or loop.time() >= ends:
                return
            if not await watch.changed(min(heartbeat_seconds, max(0.0, ends - loop.time()))):
                yield HEARTBEAT
