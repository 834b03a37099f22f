"""Waiting on a generation: the `Prefer: wait=N` header, waiting until terminal, and the SSE event stream, driven
by a real ChangeHub and a `read` over plain rows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta

import pytest

from services.common.http.errors import NotFoundError
from services.content.changes import ChangeHub
from services.content.decisions import StatusStep
from services.content.models import Generation, GenerationStatus
from services.content.reads import GenerationView
from services.content.shared_reads import SharedReads
from services.content.watching import (
    HEARTBEAT,
    LIFETIME_SPREAD,
    generation_events,
    last_event_step,
    preferred_wait,
    sse_event,
    stream_lifetime,
    wait_until_terminal,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RETRY = b"retry: 2000\n\n"
# A guard against a wait that would hang the test: far longer than any answer needs.
GUARD = 5.0


class Row:
    """One generation row whose status the test moves, and a `read` that returns a fresh copy each time (as a read
    in a new session does) and counts its calls."""

    def __init__(self) -> None:
        self.id = uuid.uuid4()
        self.status = GenerationStatus.QUEUED
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.reads = 0
        self.first_read = asyncio.Event()

    @property
    def key(self) -> str:
        return str(self.id)

    async def read(self) -> GenerationView:
        self.reads += 1
        self.first_read.set()
        generation = Generation(
            id=self.id,
            owner_id="o1",
            avatar_id="a1",
            status=self.status.value,
            params={},
            seed=1,
            attempts=0,
            created_at=T0,
            updated_at=T0,
            deadline=T0 + timedelta(minutes=10),
            started_at=self.started_at,
            finished_at=self.finished_at,
        )
        return GenerationView(generation, None)

    def start(self, seconds: float = 1) -> None:
        self.status = GenerationStatus.RUNNING
        self.started_at = T0 + timedelta(seconds=seconds)

    def finish(self, status: GenerationStatus = GenerationStatus.COMPLETED, seconds: float = 2) -> None:
        self.status = status
        self.finished_at = T0 + timedelta(seconds=seconds)


def event_data(view: GenerationView, step: StatusStep) -> str:
    return json.dumps({"status": step.status.value, "at": step.at.isoformat(), "now": view.generation.status})


def _status_event(step: int, status: str, seconds: float, now: str) -> bytes:
    at = (T0 + timedelta(seconds=seconds)).isoformat()
    return sse_event("status", step, json.dumps({"status": status, "at": at, "now": now}))


# --- Prefer: wait=N ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ("wait=10, respond-async", 10),
        ("handling=lenient; wait=3", 3),
        ("wait = 7", 7),
        ("WAIT=8", 8),
        ("wait=0", 0),
        ("wait=60", 60),
        ("wait=100", 60),
        ("wait=999999", 60),
        (None, None),
        ("", None),
        ("respond-async", None),
        ("wait=", None),
        ("wait=abc", None),
        ("wait=-5", None),
        ("wait=5s", None),
        ("nowait=5", None),
        ("wait=1234567", 60),
        ("wait=" + "9" * 400, 60),
        ("\x00garbage\xff", None),
    ],
)
def test_preferred_wait_reads_the_prefer_header_and_caps_it(prefer: str | None, expected: int | None) -> None:
    assert preferred_wait(prefer, 60.0) == expected


def test_preferred_wait_is_an_int_capped_at_the_deployments_maximum() -> None:
    assert preferred_wait("wait=30", 12.5) == 12
    assert preferred_wait("wait=30", 0) == 0
    assert type(preferred_wait("wait=30", 60.0)) is int


# --- wait_until_terminal ----------------------------------------------------------------------------------------


async def test_a_terminal_generation_is_answered_at_once() -> None:
    row, hub = Row(), ChangeHub()
    row.finish()

    async with asyncio.timeout(GUARD):
        view = await wait_until_terminal(hub, row.key, row.read, seconds=60)

    assert (view.generation.status, row.reads) == ("completed", 1)
    assert hub.watching == 0


async def test_an_open_generation_is_answered_as_it_stands_after_the_wait() -> None:
    row, hub = Row(), ChangeHub()

    view = await wait_until_terminal(hub, row.key, row.read, seconds=0.05)

    assert (view.generation.status, row.reads) == ("queued", 1)
    assert hub.watching == 0


async def test_a_zero_wait_reads_once_and_answers() -> None:
    row, hub = Row(), ChangeHub()

    view = await wait_until_terminal(hub, row.key, row.read, seconds=0)

    assert (view.generation.status, row.reads) == ("queued", 1)


async def test_the_wait_ends_when_a_notice_says_the_generation_finished() -> None:
    row, hub = Row(), ChangeHub()
    waiting = asyncio.create_task(wait_until_terminal(hub, row.key, row.read, seconds=60))
    async with asyncio.timeout(GUARD):
        await row.first_read.wait()
        row.finish()
        hub.notify(row.key)
        view = await waiting

    assert (view.generation.status, row.reads) == ("completed", 2)


async def test_a_notice_of_another_key_does_not_end_the_wait() -> None:
    row, hub = Row(), ChangeHub()
    waiting = asyncio.create_task(wait_until_terminal(hub, row.key, row.read, seconds=0.2))
    async with asyncio.timeout(GUARD):
        await row.first_read.wait()
        row.finish()
        hub.notify(str(uuid.uuid4()))
        view = await waiting

    assert (view.generation.status, row.reads) == ("queued", 1)  # never re-read: nothing told it to


async def test_a_change_that_is_not_final_keeps_waiting_and_answers_the_latest_read() -> None:
    row, hub = Row(), ChangeHub()
    waiting = asyncio.create_task(wait_until_terminal(hub, row.key, row.read, seconds=0.2))
    async with asyncio.timeout(GUARD):
        await row.first_read.wait()
        row.start()
        hub.notify(row.key)
        view = await waiting

    assert (view.generation.status, row.reads) == ("running", 2)


async def test_a_change_committed_during_the_first_read_is_not_missed() -> None:
    row, hub = Row(), ChangeHub()

    async def read_while_it_finishes() -> GenerationView:
        view = await row.read()
        if row.reads == 1:  # the result commits after this read saw the row, before the wait began
            row.finish()
            hub.notify(row.key)
        return view

    async with asyncio.timeout(GUARD):
        view = await wait_until_terminal(hub, row.key, read_while_it_finishes, seconds=30)

    assert (view.generation.status, row.reads) == ("completed", 2)


# --- Last-Event-ID and SSE framing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_event_id", "step"),
    [(None, 0), ("", 0), ("1", 1), ("3", 3), (" 2 ", 2), ("abc", 0), ("-1", 0), ("2.5", 0), ("1e3", 0)],
)
def test_last_event_step_reads_our_ids_only(last_event_id: str | None, step: int) -> None:
    assert last_event_step(last_event_id) == step


def test_an_sse_event_is_framed_as_the_spec_says() -> None:
    assert sse_event("status", 2, '{"a":1}') == b'event: status\nid: 2\ndata: {"a":1}\n\n'


# --- the event stream -------------------------------------------------------------------------------------------


def _stream(row: Row, hub: ChangeHub, *, after_step: int = 0, heartbeat: float = 30.0) -> AsyncIterator[bytes]:
    return generation_events(hub, row.key, row.read, event_data, after_step=after_step, heartbeat_seconds=heartbeat)


async def _rest(stream: AsyncIterator[bytes]) -> list[bytes]:
    async with asyncio.timeout(GUARD):
        return [chunk async for chunk in stream]


async def test_the_stream_reports_queued_running_and_completed_in_order_and_ends() -> None:
    row, hub = Row(), ChangeHub()
    stream = _stream(row, hub)

    async with asyncio.timeout(GUARD):
        assert await anext(stream) == RETRY
        assert await anext(stream) == _status_event(1, "queued", 0, "queued")
        row.start(seconds=1)
        hub.notify(row.key)
        assert await anext(stream) == _status_event(2, "running", 1, "running")
        row.finish(seconds=2)
        hub.notify(row.key)
        assert await anext(stream) == _status_event(3, "completed", 2, "completed")
        with pytest.raises(StopAsyncIteration):
            await anext(stream)

    assert hub.watching == 0


async def test_a_finished_generation_streams_its_whole_history_and_ends() -> None:
    row, hub = Row(), ChangeHub()
    row.start(seconds=1)
    row.finish(GenerationStatus.FAILED, seconds=4)

    assert await _rest(_stream(row, hub)) == [
        RETRY,
        _status_event(1, "queued", 0, "failed"),
        _status_event(2, "running", 1, "failed"),
        _status_event(3, "failed", 4, "failed"),
    ]


async def test_a_generation_canceled_before_it_ran_skips_running() -> None:
    row, hub = Row(), ChangeHub()
    row.finish(GenerationStatus.CANCELED, seconds=3)

    assert await _rest(_stream(row, hub)) == [
        RETRY,
        _status_event(1, "queued", 0, "canceled"),
        _status_event(3, "canceled", 3, "canceled"),
    ]


@pytest.mark.parametrize(("after_step", "first_id"), [(1, 2), (2, 3)])
async def test_a_reconnecting_client_gets_only_the_steps_after_its_last_event_id(
    after_step: int, first_id: int
) -> None:
    row, hub = Row(), ChangeHub()
    row.start(seconds=1)
    row.finish(seconds=2)

    chunks = await _rest(_stream(row, hub, after_step=after_step))

    expected = {2: _status_event(2, "running", 1, "completed"), 3: _status_event(3, "completed", 2, "completed")}
    assert chunks == [RETRY, *(expected[step] for step in range(first_id, 4))]


async def test_a_client_that_saw_the_final_status_gets_nothing_more() -> None:
    row, hub = Row(), ChangeHub()
    row.finish(seconds=2)

    assert await _rest(_stream(row, hub, after_step=3)) == [RETRY]


async def test_a_heartbeat_comment_is_sent_while_nothing_changes_and_repeats_no_event() -> None:
    row, hub = Row(), ChangeHub()
    stream = _stream(row, hub, heartbeat=0.01)

    async with asyncio.timeout(GUARD):
        assert await anext(stream) == RETRY
        assert await anext(stream) == _status_event(1, "queued", 0, "queued")
        assert await anext(stream) == HEARTBEAT
        assert await anext(stream) == HEARTBEAT
        row.start(seconds=1)
        row.finish(seconds=2)
        hub.notify(row.key)
        rest = [chunk async for chunk in stream]

    assert HEARTBEAT == b": keep-alive\n\n"
    assert rest == [_status_event(2, "running", 1, "completed"), _status_event(3, "completed", 2, "completed")]


async def test_the_stream_reads_again_only_when_told_or_at_a_heartbeat() -> None:
    row, hub = Row(), ChangeHub()
    stream = _stream(row, hub, heartbeat=30)

    async with asyncio.timeout(GUARD):
        await anext(stream)
        await anext(stream)
        assert row.reads == 1
        hub.notify(row.key)  # a notice without a visible change: read again, send nothing
        row.finish(seconds=2)
        hub.notify(row.key)
        assert await anext(stream) == _status_event(3, "completed", 2, "completed")
    assert row.reads == 2


async def test_a_client_that_goes_away_unregisters_its_watch() -> None:
    row, hub = Row(), ChangeHub()
    stream = generation_events(hub, row.key, row.read, event_data, after_step=0, heartbeat_seconds=30)

    async with asyncio.timeout(GUARD):
        await anext(stream)
        assert hub.watching == 1
        await stream.aclose()

    assert hub.watching == 0


async def test_a_stream_that_outlives_its_maximum_ends_and_the_client_resumes_where_it_was() -> None:
    row, hub = Row(), ChangeHub()
    stream = generation_events(hub, row.key, row.read, event_data, after_step=0, heartbeat_seconds=30, max_seconds=0.05)

    chunks = await _rest(stream)  # an open generation: only the maximum can end it

    assert chunks[:2] == [RETRY, _status_event(1, "queued", 0, "queued")]
    assert set(chunks[2:]) <= {HEARTBEAT}
    assert hub.watching == 0
    row.start(seconds=1)
    resumed = generation_events(
        hub, row.key, row.read, event_data, after_step=last_event_step("1"), heartbeat_seconds=30, max_seconds=0.05
    )
    assert (await _rest(resumed))[:2] == [RETRY, _status_event(2, "running", 1, "running")]


async def test_the_first_read_comes_before_the_first_chunk_so_a_refusal_can_still_be_answered() -> None:
    hub = ChangeHub()

    async def unknown() -> GenerationView:
        raise NotFoundError("unknown generation")

    stream = generation_events(hub, "g", unknown, event_data, after_step=0, heartbeat_seconds=30)

    with pytest.raises(NotFoundError):
        await anext(stream)
    assert hub.watching == 0


async def test_a_read_that_fails_mid_stream_ends_the_stream_instead_of_breaking_it() -> None:
    row, hub = Row(), ChangeHub()

    async def read_then_fail() -> GenerationView:
        if row.reads >= 1:
            raise ConnectionResetError("the database went away")
        return await row.read()

    stream = generation_events(hub, row.key, read_then_fail, event_data, after_step=0, heartbeat_seconds=30)
    async with asyncio.timeout(GUARD):
        assert [await anext(stream), await anext(stream)] == [RETRY, _status_event(1, "queued", 0, "queued")]
        hub.notify(row.key)
        rest = [chunk async for chunk in stream]

    assert rest == []
    assert hub.watching == 0


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_a_streams_lifetime_is_the_maximum_less_up_to_a_tenth(draw: float) -> None:
    lifetime = stream_lifetime(300.0, lambda: draw)

    assert 300.0 * (1 - LIFETIME_SPREAD) < lifetime <= 300.0
    assert lifetime == pytest.approx(300.0 - 30.0 * draw)


async def test_many_streams_of_one_generation_share_one_read_per_change() -> None:
    row, hub = Row(), ChangeHub()
    reads: SharedReads[GenerationView] = SharedReads(hub, lambda _key: row.read(), max_age=60.0)

    def shared_read() -> Awaitable[GenerationView]:
        return reads.read(row.key)

    streams = [
        generation_events(reads, row.key, shared_read, event_data, after_step=0, heartbeat_seconds=30)
        for _ in range(200)
    ]
    async with asyncio.timeout(GUARD):
        firsts = await asyncio.gather(*(anext(stream) for stream in streams))
        queued = await asyncio.gather(*(anext(stream) for stream in streams))
        assert row.reads == 1
        row.start(seconds=1)
        hub.notify(row.key)
        running = await asyncio.gather(*(anext(stream) for stream in streams))
        assert row.reads == 2
        row.finish(seconds=2)
        hub.notify(row.key)
        rests = await asyncio.gather(*(_rest(stream) for stream in streams))

    assert set(firsts) == {RETRY}
    assert set(queued) == {_status_event(1, "queued", 0, "queued")}
    assert set(running) == {_status_event(2, "running", 1, "running")}
    assert all(rest == [_status_event(3, "completed", 2, "completed")] for rest in rests)
    assert (row.reads, hub.watching) == (3, 0)
