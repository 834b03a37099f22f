"""ChangeHub and Watch: in-process wake-ups by key, without a database."""

from __future__ import annotations

import asyncio

import pytest

from services.common import changes
from services.common.changes import ChangeHub


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
