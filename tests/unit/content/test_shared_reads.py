"""SharedReads: one read per change version of a key, shared by every caller, over a real ChangeHub and a load that
counts its calls and finishes when the test says."""

from __future__ import annotations

import asyncio

import pytest

from services.content.changes import ChangeHub
from services.content.shared_reads import SharedReads, reusable

# A guard against a wait that would hang the test: far longer than any answer needs.
GUARD = 5.0


class Store:
    """The value behind each key, and a load that counts its calls and, while `gate` is clear, waits for it."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.loads: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False

    async def load(self, key: str) -> int:
        self.loads.append(key)
        await self.gate.wait()
        if self.failing:
            raise ConnectionResetError("the database went away")
        return self.values.get(key, 0)


def shared(hub: ChangeHub, store: Store, max_age: float = 60.0) -> SharedReads[int]:
    return SharedReads(hub, store.load, max_age=max_age)


async def test_callers_at_the_same_version_share_one_read_in_flight() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    store.values["g"] = 1
    store.gate.clear()
    with reads.watch("g"):
        callers = [asyncio.create_task(reads.read("g")) for _ in range(500)]
        await asyncio.sleep(0)  # every caller has asked before the read ends
        store.gate.set()
        async with asyncio.timeout(GUARD):
            values = await asyncio.gather(*callers)

    assert values == [1] * 500
    assert (store.loads, reads.loads) == (["g"], 1)


async def test_a_finished_read_serves_later_callers_until_a_notice_then_one_read_serves_all_it_woke() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    store.values["g"] = 1
    with reads.watch("g") as first, reads.watch("g") as second:
        assert [await reads.read("g"), await reads.read("g")] == [1, 1]
        assert len(store.loads) == 1
        store.values["g"] = 2
        hub.notify("g")
        async with asyncio.timeout(GUARD):
            assert await first.changed(1) and await second.changed(1)
            assert list(await asyncio.gather(reads.read("g"), reads.read("g"))) == [2, 2]

    assert len(store.loads) == 2


async def test_a_read_begun_before_a_notice_never_answers_a_caller_after_it() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    store.values["g"] = 1
    store.gate.clear()
    with reads.watch("g"):
        early = asyncio.create_task(reads.read("g"))
        await asyncio.sleep(0)
        # The change commits while the early read is in flight (it may or may not see it): a caller who comes
        # after the notice gets a read of its own.
        store.values["g"] = 2
        hub.notify("g")
        late = asyncio.create_task(reads.read("g"))
        await asyncio.sleep(0)
        store.gate.set()
        async with asyncio.timeout(GUARD):
            assert await late == 2
            await early

    assert len(store.loads) == 2


async def test_another_keys_notice_does_not_make_a_watched_key_read_again() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    with reads.watch("g"), reads.watch("h"):
        await reads.read("g")
        hub.notify("h")
        hub.notify("unwatched")
        await reads.read("g")

    assert store.loads == ["g"]


async def test_a_listener_reconnect_makes_every_watched_key_read_again_once() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    with reads.watch("g"), reads.watch("h"):
        await asyncio.gather(reads.read("g"), reads.read("h"))
        hub.notify_all()
        await asyncio.gather(reads.read("g"), reads.read("h"), reads.read("g"), reads.read("h"))

    assert sorted(store.loads) == ["g", "g", "h", "h"]


async def test_a_failed_read_is_shared_by_those_waiting_then_forgotten() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    store.failing = True
    store.gate.clear()
    with reads.watch("g"):
        callers = [asyncio.create_task(reads.read("g")) for _ in range(3)]
        await asyncio.sleep(0)
        store.gate.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(result, ConnectionResetError) for result in results)
        assert len(store.loads) == 1

        store.failing = False
        store.values["g"] = 7
        assert await reads.read("g") == 7  # the next caller reads again, at the same version

    assert len(store.loads) == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_read_the_others_await() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    store.values["g"] = 3
    store.gate.clear()
    with reads.watch("g"):
        leaving = asyncio.create_task(reads.read("g"))
        staying = asyncio.create_task(reads.read("g"))
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        store.gate.set()
        async with asyncio.timeout(GUARD):
            assert await staying == 3
        assert leaving.cancelled()

    assert len(store.loads) == 1


async def test_nothing_is_kept_for_a_key_nobody_watches() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store)
    with reads.watch("g"):
        await reads.read("g")
    # Its last watch left: the kept result went with it.
    with reads.watch("g"):
        await reads.read("g")
    # Unwatched, a read is shared only while in flight.
    await reads.read("g")
    await reads.read("g")

    assert len(store.loads) == 4
    assert reads._flights == {}


async def test_a_kept_read_older_than_max_age_is_read_again() -> None:
    hub, store = ChangeHub(), Store()
    reads = shared(hub, store, max_age=0.0)
    with reads.watch("g"):
        await reads.read("g")
        await asyncio.sleep(0.01)
        await reads.read("g")

    assert len(store.loads) == 2


@pytest.mark.parametrize(
    ("flight_version", "age", "version", "max_age", "expected"),
    [
        (3, 0.0, 3, 15.0, True),
        (3, 15.0, 3, 15.0, True),
        (3, 15.1, 3, 15.0, False),
        (2, 0.0, 3, 15.0, False),  # begun before a notice the caller may have missed
        (4, 0.0, 3, 15.0, False),  # not expected (versions only grow), never trusted
    ],
)
def test_a_read_is_reusable_only_at_the_same_version_and_while_young(
    flight_version: int, age: float, version: int, max_age: float, expected: bool
) -> None:
    assert reusable(flight_version, age, version, max_age) is expected
