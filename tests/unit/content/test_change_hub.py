"""ChangeHub and Watch: in-process wake-ups by key, without a database."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.content import changes
from services.content.changes import ChangeHub


async def test_notify_wakes_the_watches_of_that_key_only() -> None:
    hub = ChangeHub()
    with hub.watch("a") as first, hub.watch("a") as second, hub.watch("b") as other:
        waiting = asyncio.gather(first.changed(5), second.changed(5))
        await asyncio.sleep(0)  # both are waiting before the notification
        hub.notify("a")
        assert list(await waiting) == [True, True]
        assert not await other.changed(0.05)


async def test_a_notification_before_changed_is_not_lost() -> None:
    hub = ChangeHub()
    with hub.watch("a") as watch:
        hub.notify("a")
        assert await watch.changed(0.05)


async def test_changed_consumes_the_notification() -> None:
    hub = ChangeHub()
    with hub.watch("a") as watch:
        hub.notify("a")
        hub.notify("a")  # two before a read make one change, not two
        assert await watch.changed(0.05)
        assert not await watch.changed(0.05)
        hub.notify("a")
        assert await watch.changed(0.05)


async def test_changed_returns_false_after_the_timeout() -> None:
    hub = ChangeHub()
    with hub.watch("a") as watch:
        assert not await watch.changed(0.05)
        assert not await watch.changed(0)


async def test_notify_all_wakes_every_watch() -> None:
    hub = ChangeHub()
    with hub.watch("a") as a, hub.watch("b") as b, hub.watch("b") as b2:
        hub.notify_all()
        assert [await a.changed(0.05), await b.changed(0.05), await b2.changed(0.05)] == [True, True, True]


async def test_leaving_the_block_unregisters_the_watch() -> None:
    hub = ChangeHub()
    assert hub.watching == 0
    with hub.watch("a") as watch:
        with hub.watch("a"), hub.watch("b"):
            assert hub.watching == 3
        assert hub.watching == 1
        hub.notify("b")  # its only watch is gone: a no-op
        assert not await watch.changed(0)
    assert hub.watching == 0
    hub.notify("a")
    hub.notify_all()
    assert not await watch.changed(0)  # unregistered: no longer woken


async def test_an_exception_in_the_block_still_unregisters() -> None:
    hub = ChangeHub()
    with pytest.raises(RuntimeError), hub.watch("a"):
        raise RuntimeError("handler failed")
    assert hub.watching == 0


async def test_a_failed_health_check_counts_as_a_lost_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer that vanished without closing the socket is only noticed by asking it something.
    class Silent:
        async def fetchval(self, query: str, **_options: float) -> int:
            raise ConnectionResetError("no answer")

    monkeypatch.setattr(changes, "HEALTH_CHECK_INTERVAL", 0.01)
    await asyncio.wait_for(changes._until_lost(Silent(), asyncio.Event()), 5)


# --- versions: what shared reads are keyed by ------------------------------------------------------------------


def test_a_watched_keys_version_moves_with_its_own_notices_and_a_reconnect_only() -> None:
    hub = ChangeHub()
    with hub.watch("a"), hub.watch("b"):
        start = hub.version("a")
        hub.notify("b")
        hub.notify("unwatched")
        assert hub.version("a") == start
        hub.notify("a")
        after_notice = hub.version("a")
        assert after_notice > start
        hub.notify_all()
        assert hub.version("a") > after_notice
        assert hub.version("b") > after_notice


def test_an_unwatched_keys_version_moves_with_every_notice() -> None:
    hub = ChangeHub()
    before = hub.version("a")
    hub.notify("b")
    assert hub.version("a") > before


def test_a_key_watched_again_never_goes_back_to_an_earlier_version() -> None:
    hub = ChangeHub()
    with hub.watch("a"):
        hub.notify("a")
        hub.notify("a")
        seen = hub.version("a")
    hub.notify("b")
    with hub.watch("a"):
        assert hub.version("a") >= seen
        assert hub.watchers("a") == 1
    assert hub.watchers("a") == 0


async def test_a_notice_to_many_watches_wakes_them_in_batches_with_the_loop_turning_between() -> None:
    hub = ChangeHub()
    count = changes.WAKE_BATCH * 5 + 3
    with contextlib.ExitStack() as stack:
        watches = [stack.enter_context(hub.watch("crowded")) for _ in range(count)]
        woken_when_others_ran: list[int] = []
        hub.notify("crowded")
        woken_now = sum(watch._event.is_set() for watch in watches)
        # Another request's callback, scheduled after the notice: it runs before the last batch is woken.
        asyncio.get_running_loop().call_soon(
            lambda: woken_when_others_ran.append(sum(watch._event.is_set() for watch in watches))
        )
        async with asyncio.timeout(5):
            assert all(await asyncio.gather(*(watch.changed(5) for watch in watches)))

    assert woken_now == changes.WAKE_BATCH
    assert woken_when_others_ran and woken_when_others_ran[0] < count
