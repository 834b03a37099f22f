"""Caps on open followers of generations (event streams, waits) and the read they share: the pure rules, the counts,
and a follower's view of the shared read (404 for a stranger, counted once its owner is known)."""

from __future__ import annotations

import asyncio
import resource
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.common.http.errors import NotFoundError
from services.common.observability.metrics import ServiceMetrics
from services.content.changes import ChangeHub
from services.content.models import Generation, GenerationStatus
from services.content.reads import GenerationView
from services.content.streams import (
    RESERVED_FILE_DESCRIPTORS,
    STREAM_RETRY_AFTER_SECONDS,
    TOO_MANY_STREAMS,
    TOO_MANY_STREAMS_FOR_GENERATION,
    TOO_MANY_STREAMS_FOR_OWNER,
    Followers,
    GenerationWatching,
    StreamCaps,
    StreamLimitError,
    cap_refusal,
    raise_open_file_limit,
    replica_cap,
)

CAPS = StreamCaps(per_generation=2, per_owner=3, per_replica=5)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
GUARD = 5.0


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, None),
        ({"replica": 4, "generation": 1, "owner": 2}, None),
        ({"replica": 5}, TOO_MANY_STREAMS),
        ({"generation": 2}, TOO_MANY_STREAMS_FOR_GENERATION),
        ({"owner": 3}, TOO_MANY_STREAMS_FOR_OWNER),
        # The replica's cap is named before the generation's, the generation's before the owner's.
        ({"replica": 9, "generation": 9, "owner": 9}, TOO_MANY_STREAMS),
        ({"replica": 0, "generation": 2, "owner": 3}, TOO_MANY_STREAMS_FOR_GENERATION),
    ],
)
def test_one_more_follower_is_refused_by_the_first_cap_it_would_pass(counts: dict[str, int], expected: str) -> None:
    assert cap_refusal(CAPS, **counts) == expected


@pytest.mark.parametrize(
    ("configured", "open_files", "expected"),
    [
        (2000, 1_048_576, 2000),
        (2000, 1024, (1024 - RESERVED_FILE_DESCRIPTORS) // 2),
        (2000, 100, 1),  # a tiny limit still lets one through (and the warning says why so few)
        (10, 20_000, 10),
    ],
)
def test_the_replica_cap_stays_within_the_open_file_limit(configured: int, open_files: int, expected: int) -> None:
    assert replica_cap(configured, open_files) == expected


def test_holds_are_counted_per_generation_per_owner_and_in_all_until_released() -> None:
    followers = Followers("event streams", CAPS, label="stream")
    first = followers.hold(generation="g1", owner="o1")
    second = followers.hold(generation="g1", owner="o1")
    third = followers.hold(generation="g2", owner="o1")

    with pytest.raises(StreamLimitError) as generation_full:
        followers.hold(generation="g1", owner="o2")
    with pytest.raises(StreamLimitError) as owner_full:
        followers.hold(generation="g3", owner="o1")
    assert generation_full.value.reason_code == TOO_MANY_STREAMS_FOR_GENERATION
    assert owner_full.value.reason_code == TOO_MANY_STREAMS_FOR_OWNER
    assert owner_full.value.status_code == 429
    assert owner_full.value.headers == {"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)}
    # The refused holds gave back what they had taken.
    assert (followers.open, dict(followers.by_generation), dict(followers.by_owner)) == (
        3,
        {"g1": 2, "g2": 1},
        {"o1": 3},
    )

    first.release()
    first.release()  # once only
    followers.hold(generation="g1", owner="o2")
    for hold in (second, third):
        hold.release()
    assert (followers.open, dict(followers.by_generation), dict(followers.by_owner)) == (1, {"g1": 1}, {"o2": 1})


def test_the_replica_cap_counts_holds_whose_owner_is_not_known_yet() -> None:
    followers = Followers("event streams", CAPS, label="stream")
    holds = [followers.hold(generation=f"g{n}") for n in range(5)]

    with pytest.raises(StreamLimitError) as full:
        followers.hold(owner="o1")
    assert full.value.reason_code == TOO_MANY_STREAMS

    holds[0].claim(owner="o1")
    holds[0].claim(owner="o1", generation="other")  # claimed parts stay as they were
    assert (dict(followers.by_owner), followers.by_generation["other"]) == ({"o1": 1}, 0)


def _view(generation_id: uuid.UUID, owner_id: str) -> GenerationView:
    generation = Generation(
        id=generation_id,
        owner_id=owner_id,
        avatar_id="a1",
        status=GenerationStatus.QUEUED.value,
        params={},
        seed=1,
        attempts=0,
        created_at=T0,
        updated_at=T0,
        deadline=T0 + timedelta(minutes=10),
    )
    return GenerationView(generation, None)


class Generations:
    """get_unchecked over one owner's generations, counting its calls (each a database read in the service)."""

    def __init__(self, owner_id: str) -> None:
        self.owner_id = owner_id
        self.reads = 0

    async def get_unchecked(self, generation_id: uuid.UUID) -> GenerationView:
        self.reads += 1
        await asyncio.sleep(0.01)  # a read takes a while: callers arrive while it is in flight
        return _view(generation_id, self.owner_id)


def _watching(generations: Generations, caps: StreamCaps = CAPS) -> GenerationWatching:
    return GenerationWatching(
        ChangeHub(), generations.get_unchecked, caps, heartbeat_seconds=15.0, max_stream_seconds=300.0
    )


async def test_a_stranger_gets_404_and_is_never_counted_for_someone_elses_generation() -> None:
    watching = _watching(Generations("o1"))
    key = str(uuid.uuid4())
    hold = watching.streams.hold(owner="stranger")

    with watching.reads.watch(key), pytest.raises(NotFoundError):
        await watching.reader(key, "stranger", hold)()

    assert dict(watching.streams.by_generation) == {}
    hold.release()
    assert watching.streams.open == 0


async def test_a_signed_link_follower_is_counted_for_the_generations_owner_after_the_first_read() -> None:
    watching = _watching(Generations("o1"))
    key = str(uuid.uuid4())
    hold = watching.streams.hold(generation=key)
    assert dict(watching.streams.by_owner) == {}

    with watching.reads.watch(key):
        view = await watching.reader(key, None, hold)()

    assert view.generation.owner_id == "o1"
    assert dict(watching.streams.by_owner) == {"o1": 1}


async def test_the_owners_cap_refuses_a_signed_link_follower_once_its_owner_is_known() -> None:
    watching = _watching(Generations("o1"), StreamCaps(per_generation=10, per_owner=1, per_replica=10))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    held = watching.streams.hold(generation=first, owner="o1")
    hold = watching.streams.hold(generation=second)

    with watching.reads.watch(second), pytest.raises(StreamLimitError) as refused:
        await watching.reader(second, None, hold)()

    assert refused.value.reason_code == TOO_MANY_STREAMS_FOR_OWNER
    hold.release()
    held.release()
    assert (watching.streams.open, dict(watching.streams.by_generation)) == (0, {})


async def test_hundreds_of_followers_of_one_generation_cost_one_read_per_change() -> None:
    generations = Generations("o1")
    watching = _watching(generations, StreamCaps(per_generation=500, per_owner=500, per_replica=500))
    key = str(uuid.uuid4())

    async def follower(woken: asyncio.Event) -> None:
        hold = watching.streams.hold(generation=key)
        read = watching.reader(key, None, hold)
        try:
            with watching.reads.watch(key) as watch:
                await read()
                woken.set()
                assert await watch.changed(GUARD)
                await read()
        finally:
            hold.release()

    ready = [asyncio.Event() for _ in range(300)]
    async with asyncio.timeout(GUARD):
        followers = [asyncio.create_task(follower(event)) for event in ready]
        for event in ready:
            await event.wait()
        assert generations.reads == 1
        watching.hub.notify(key)
        await asyncio.gather(*followers)

    assert (generations.reads, watching.reads.loads) == (2, 2)
    assert watching.streams.open == 0


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    after = raise_open_file_limit()

    assert after >= soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] in (hard, soft)


async def test_open_followers_refusals_and_shared_reads_are_in_the_metrics() -> None:
    metrics = ServiceMetrics("test-content")
    generations = Generations("o1")
    watching = GenerationWatching(
        ChangeHub(), generations.get_unchecked, CAPS, heartbeat_seconds=15.0, max_stream_seconds=300.0, metrics=metrics
    )
    key = str(uuid.uuid4())
    holds = [watching.streams.hold(generation=key), watching.streams.hold(generation=key)]
    with pytest.raises(StreamLimitError):
        watching.streams.hold(generation=key)
    wait = watching.waits.hold(generation=key, owner="o1")
    with watching.reads.watch(key):
        await watching.reader(key, None, holds[0])()

    assert metrics.value("vixen_content_followers_open", kind="stream") == 2
    assert metrics.value("vixen_content_followers_open", kind="wait") == 1
    refused = metrics.value(
        "vixen_content_followers_refused_total", kind="stream", reason=TOO_MANY_STREAMS_FOR_GENERATION
    )
    assert refused == 1
    assert metrics.value("vixen_content_follower_reads_total") == 1
    wait.release()
    metrics.shutdown()
