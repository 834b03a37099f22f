"""Issue 20, item 3: a flood of event streams exhausts nothing. Content served by uvicorn on a real socket, real
PostgreSQL and RabbitMQ; hundreds of raw SSE connections on one generation's signed `events_url` (no token) and on
one owner's token. Past the caps only 429s with Retry-After, never a 5xx; one database read per change however many
streams watch; another owner's calls stay quick meanwhile; a pool exhausted on purpose answers 503, never 500."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from contracts.events import GenerationFailed
from contracts.topology import Topology
from services.common.messaging.broker import Publisher
from services.content.main import create_app
from services.content.settings import ContentSettings
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, publish, ready_avatar, started, submit
from tests.support.sse_flood import Answer, OpenStream, all_reach, close_all, open_many, open_stream
from tests.support.stack.live_server import live_server

PER_GENERATION = 100
PER_OWNER = 150
FLOOD = 300
# On a 2-core machine that runs other suites at the same time one call may stall for a second (a GC pause, another
# process): the typical call must stay quick and none may hang. The benchmark holds the p99 target (make
# bench-streams: p99 ≤ 200 ms at 5,000 streams).
OTHER_OWNER_MEDIAN_SECONDS = 0.2
OTHER_OWNER_MAX_SECONDS = 5.0
GUARD = 60.0


@pytest.fixture
async def publisher(amqp: AbstractRobustConnection, topo: Topology) -> AsyncIterator[Publisher]:
    """Publishes on this run's events exchange as identity or the gateway would."""
    opened = await Publisher.open(amqp, topo.events_exchange)
    yield opened
    await opened.close()


class GenerationReads:
    """Counts the statements that read one generation's row for a stream or a wait (a plain SELECT of
    content_generations naming its id), as the database sees them: a SQLAlchemy listener on every engine,
    filtered to this test's database. The consumer's `SELECT … FOR UPDATE` of a result is not one of them."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.counts: dict[str, int] = {}

    def __call__(
        self, conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _executemany: bool
    ) -> None:
        if conn.engine.url.database != self.database:
            return
        if not statement.lstrip().upper().startswith("SELECT") or "FOR UPDATE" in statement.upper():
            return
        if "FROM content_generations" not in statement:
            return
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        for value in values:
            key = str(value)
            if key in self.counts:
                self.counts[key] += 1

    def follow(self, generation_id: str) -> None:
        self.counts[generation_id] = 0

    def since(self, generation_id: str) -> int:
        """Reads of the generation since the last call (or since `follow`)."""
        seen, self.counts[generation_id] = self.counts[generation_id], 0
        return seen


@pytest.fixture
def generation_reads(pg_url: URL) -> Iterator[GenerationReads]:
    counter = GenerationReads(str(pg_url.database))
    event.listen(Engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(Engine, "before_cursor_execute", counter)


async def other_owner_calls(client: httpx.AsyncClient, stop: asyncio.Event) -> list[tuple[int, float]]:
    """Another owner's API calls, one after another until `stop`: (status, seconds) of each."""
    auth = bearer(new_owner())
    calls: list[tuple[int, float]] = []
    while not stop.is_set() or len(calls) < 20:
        begun = time.perf_counter()
        response = await client.get("/api/v1/content", headers=auth)
        calls.append((response.status_code, time.perf_counter() - begun))
    return calls


def statuses(answers: list[Answer]) -> dict[int, int]:
    found: dict[int, int] = {}
    for answer in answers:
        found[answer.status] = found.get(answer.status, 0) + 1
    return found


def assert_refused_with_retry_after(answers: list[Answer], reason_code: str) -> None:
    for answer in answers:
        assert answer.status == 429, (answer.status, answer.error, answer.body[:300])
        assert int(answer.headers["retry-after"]) > 0
        assert f'"reason_code":"{reason_code}"' in answer.body.decode(), answer.body[:300]


async def test_a_flood_of_streams_gets_429s_past_the_caps_and_costs_one_read_per_change(
    content_settings: ContentSettings, publisher: Publisher, generation_reads: GenerationReads
) -> None:
    settings = content_settings.model_copy(
        update={
            "max_streams_per_generation": PER_GENERATION,
            "max_streams_per_owner": PER_OWNER,
            "max_streams": 2000,
            # No heartbeat (and so no periodic read) while the test counts reads.
            "sse_heartbeat_seconds": 120.0,
        }
    )
    streams: list[OpenStream] = []
    with live_server(create_app(settings), "content-flood") as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            owner = new_owner()
            auth = bearer(owner)
            avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
            linked = await submit(client, auth, avatar_id)
            tokened = await submit(client, auth, avatar_id)
            generation_reads.follow(linked["id"])
            stop = asyncio.Event()
            others = asyncio.create_task(other_owner_calls(client, stop))
            try:
                async with asyncio.timeout(GUARD):
                    # The attack: the signed link alone, hundreds of times at once.
                    by_link, refused_by_link = await open_many(base_url, linked["events_url"], FLOOD)
                    streams += by_link
                    assert await all_reach(by_link, "1") == len(by_link)
                    # The same owner's token on another of its generations: the owner's cap.
                    path = f"/api/v1/content/{tokened['id']}/events"
                    by_token, refused_by_token = await open_many(base_url, path, PER_OWNER, headers=auth)
                    streams += by_token
                    assert await all_reach(by_token, "1") == len(by_token)
                    generation_reads.since(linked["id"])

                    # The generation changes twice while every stream of it watches.
                    await publish(publisher, started(linked["id"]), GATEWAY)
                    assert await all_reach(by_link, "2") == len(by_link)
                    reads_for_start = generation_reads.since(linked["id"])
                    failure = GenerationFailed(generation_id=linked["id"], error_code="CUDA_OOM", error="oom")
                    await publish(publisher, failure, GATEWAY)
                    assert await all_reach(by_link, "3") == len(by_link)
                    reads_for_end = generation_reads.since(linked["id"])
            finally:
                stop.set()
                calls = await others
                close_all(streams)

    assert (len(by_link), statuses(refused_by_link)) == (PER_GENERATION, {429: FLOOD - PER_GENERATION})
    assert_refused_with_retry_after(refused_by_link, "TOO_MANY_STREAMS_FOR_GENERATION")
    assert (len(by_token), statuses(refused_by_token)) == (PER_OWNER - PER_GENERATION, {429: PER_GENERATION})
    assert_refused_with_retry_after(refused_by_token, "TOO_MANY_STREAMS_FOR_OWNER")
    # One read of the row per change, however many streams watch it (the old code read once per stream).
    assert (reads_for_start, reads_for_end) == (1, 1)
    assert {status for status, _ in calls} == {200}
    seconds = sorted(s for _, s in calls)
    assert statistics.median(seconds) <= OTHER_OWNER_MEDIAN_SECONDS, seconds
    assert seconds[-1] <= OTHER_OWNER_MAX_SECONDS, seconds[-5:]


async def test_waits_past_the_caps_are_answered_at_once_and_the_held_ones_share_one_read_per_change(
    content_settings: ContentSettings, publisher: Publisher, generation_reads: GenerationReads
) -> None:
    held_cap, asked = 20, 60
    settings = content_settings.model_copy(
        update={"max_streams_per_generation": held_cap, "max_streams_per_owner": 1000, "max_wait_seconds": 30.0}
    )
    with live_server(create_app(settings), "content-waits") as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=GUARD) as client:
            owner = new_owner()
            auth = bearer(owner)
            avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
            generation_id = (await submit(client, auth, avatar_id))["id"]
            generation_reads.follow(generation_id)
            waits = [
                asyncio.ensure_future(
                    client.get(f"/api/v1/content/{generation_id}", headers={**auth, "Prefer": "wait=30"})
                )
                for _ in range(asked)
            ]
            async with asyncio.timeout(GUARD):
                # Those past the cap answer at once, the wait not applied (a preference, not a right).
                pending = set(waits)
                while len(pending) > held_cap:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                at_once = [wait.result() for wait in waits if wait.done()]
                generation_reads.since(generation_id)
                failure = GenerationFailed(generation_id=generation_id, error_code="CUDA_OOM", error="oom")
                await publish(publisher, failure, GATEWAY)
                answers = await asyncio.gather(*waits)
            reads_for_end = generation_reads.since(generation_id)

    held = [r for r in answers if "Preference-Applied" in r.headers]
    assert {r.status_code for r in answers} == {200}
    assert len(held) == held_cap
    assert {r.json()["status"] for r in held} == {"failed"}
    assert len(at_once) == asked - held_cap
    assert all("Preference-Applied" not in r.headers and r.json()["status"] == "queued" for r in at_once)
    assert reads_for_end == 1


async def test_a_pool_exhausted_on_purpose_answers_503_with_retry_after_never_500(
    content_settings: ContentSettings, pg_url: URL
) -> None:
    settings = content_settings.model_copy(update={"db_pool_timeout_seconds": 1.0})
    with live_server(create_app(settings), "content-pool") as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=GUARD) as client:
            # Every read of the generations table waits behind this lock, each holding a pooled connection.
            blocker = await asyncpg.connect(pg_url.set(drivername="postgresql").render_as_string(hide_password=False))
            try:
                await blocker.execute("BEGIN")
                await blocker.execute("LOCK TABLE content_generations IN ACCESS EXCLUSIVE MODE")
                lists = [client.get("/api/v1/content", headers=bearer(new_owner())) for _ in range(20)]
                streams = [
                    open_stream(base_url, f"/api/v1/content/{uuid.uuid4()}/events", bearer(new_owner()))
                    for _ in range(5)
                ]
                calls = [asyncio.ensure_future(call) for call in [*lists, *streams]]
                # The first answers come while the pool is exhausted (the old code took 30 s and a 500).
                async with asyncio.timeout(GUARD):
                    await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await blocker.execute("ROLLBACK")
                await blocker.close()
            async with asyncio.timeout(GUARD):
                answers = await asyncio.gather(*calls)
            after = await client.get("/api/v1/content", headers=bearer(new_owner()))

    found: list[tuple[int, dict[str, str], str]] = []
    for answer in answers:
        if isinstance(answer, httpx.Response):
            found.append((answer.status_code, dict(answer.headers), answer.text))
        elif isinstance(answer, OpenStream):
            answer.close()
            found.append((200, answer.answer.headers, ""))
        else:
            found.append((answer.status, answer.headers, answer.body.decode()))
    codes = [status for status, _, _ in found]
    assert set(codes) <= {200, 404, 503}, codes
    busy = [(headers, text) for status, headers, text in found if status == 503]
    assert busy, codes
    for headers, text in busy:
        assert int(headers["retry-after"]) > 0
        assert '"reason_code":"DATABASE_BUSY"' in text.replace(" ", ""), text
    assert after.status_code == 200
