"""Change notifications: wake waiters of a key in every replica after the change that concerns them commits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

# Reconnect backoff of the listener: quick after a blip, capped so an outage costs one attempt every few seconds.
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
# A connection that dies without a FIN looks healthy until something is sent: ask now and then.
HEALTH_CHECK_INTERVAL = 15.0
HEALTH_CHECK_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
# Watches a notice wakes per turn of the event loop.
WAKE_BATCH = 20

# session.info key: (hub, key) pairs announced in the session's current transaction, on backends without NOTIFY.
_PENDING = "services.content.changes.pending"


class Watch:
    """One waiter's view of a key: remembers a notification until `changed` consumes it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._event = asyncio.Event()

    def _wake(self) -> None:
        self._event.set()

    # A timeout here is an answer (False), not an error: hence the parameter rather than asyncio.timeout.
    async def changed(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True once a notification arrived since the last True (or since registration); False after `timeout`."""
        if not self._event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                return False
        self._event.clear()
        return True


class ChangeHub:
    """In-process waiters keyed by a string: wake the waiters of one key, or all of them.

    It also numbers what it heard (`version`), so that waiters of one key can share a read: a read begun at a key's
    version shows every change whose notice had arrived by then, and a change it may have missed brings a notice
    that moves the version on and wakes everyone watching.
    """

    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}
        # One count for every notice heard; a watched key keeps the count of the last notice that concerned it.
        self._notices = 0
        self._versions: dict[str, int] = {}

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[Watch]:
        """Register a Watch of `key` for the duration of the block."""
        watch = Watch(key)
        if key not in self._watches:
            self._watches[key] = set()
            self._versions[key] = self._notices
        self._watches[key].add(watch)
        try:
            yield watch
        finally:
            watches = self._watches[key]
            watches.discard(watch)
            if not watches:
                del self._watches[key]
                del self._versions[key]

    def notify(self, key: str) -> None:
        self._notices += 1
        watches = self._watches.get(key)
        if watches is None:
            return
        self._versions[key] = self._notices
        _wake_in_batches(list(watches))

    def notify_all(self) -> None:
        self._notices += 1
        woken: list[Watch] = []
        for key, watches in self._watches.items():
            self._versions[key] = self._notices
            woken.extend(watches)
        _wake_in_batches(woken)

    def version(self, key: str) -> int:
        """A number that grows whenever a notice may concern `key`: the count of its last notice while it is watched,
        else the count of every notice heard (an unwatched key's notices are not remembered one by one)."""
        return self._versions.get(key, self._notices)

    def watchers(self, key: str) -> int:
        """How many watches of `key` are registered."""
        return len(self._watches.get(key, ()))

    @property
    def watching(self) -> int:
        return sum(len(watches) for watches in self._watches.values())


def _wake_in_batches(watches: list[Watch], start: int = 0) -> None:
    # WAKE_BATCH now, the next batch at the loop's next turn (after it polled for I/O): thousands of streams of one
    # generation do not hold the loop for their whole fan-out, and the other requests are served between batches.
    end = start + WAKE_BATCH
    for watch in watches[start:end]:
        watch._wake()
    if end >= len(watches):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a synchronous caller): nothing else to be fair to
        for watch in watches[end:]:
            watch._wake()
        return
    loop.call_soon(_wake_in_batches, watches, end)


class ChangeFeed:
    """Announces changes inside a transaction; delivered to every process's hub after commit, never on rollback.

    PostgreSQL carries them with NOTIFY on `channel` (transactional, seen by every replica's listener, this
    one's included). Other backends serve one process: the hub is notified by an after-commit hook.
    """

    def __init__(self, hub: ChangeHub, channel: str) -> None:
        self.hub = hub
        self.channel = channel

    async def announce(self, session: AsyncSession, key: str) -> None:
        """Announce a change of `key` in the session's open transaction."""
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SELECT pg_notify(:channel, :key)"), {"channel": self.channel, "key": key})
            return
        _notify_after_commit(session.sync_session, self.hub, key)

    @contextlib.asynccontextmanager
    async def running(self, engine: AsyncEngine) -> AsyncIterator[None]:
        """Listen for the life of the app (PostgreSQL only); returns at once, connecting in the background."""
        if engine.dialect.name != "postgresql":
            yield
            return
        listener = _Listener(self.hub, self.channel, _asyncpg_dsn(engine.url))
        task = asyncio.create_task(listener.run(), name=f"change-feed:{self.channel}")
        try:
            yield
        finally:
            task.cancel()
            # wait(), not `await task`: the task's CancelledError is expected, ours (if any) must still propagate.
            await asyncio.wait([task])


class _Listener:
    """LISTENs on one dedicated connection, reconnecting with backoff for as long as it runs."""

    def __init__(self, hub: ChangeHub, channel: str, dsn: str) -> None:
        self._hub = hub
        self._channel = channel
        self._dsn = dsn

    async def run(self) -> None:
        delay = FIRST_RETRY_DELAY
        failing = False
        while True:
            lost = asyncio.Event()
            try:
                connection = await self._listen(lost)
            except Exception as error:
                # The first failure of an outage is worth a warning; the retries that follow are not.
                level = logging.DEBUG if failing else logging.WARNING
                log.log(
                    level,
                    "change feed %s: cannot listen (%s: %s); retrying in %.1fs",
                    self._channel,
                    type(error).__name__,
                    error,
                    delay,
                )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if failing:
                log.info("change feed %s: listening again", self._channel)
            failing, delay = False, FIRST_RETRY_DELAY
            try:
                # Notifications sent while nobody listened are gone: every waiter re-reads once.
                self._hub.notify_all()
                await _until_lost(connection, lost)
            finally:
                await _close(connection)
            log.warning("change feed %s: lost the listening connection; reconnecting", self._channel)

    async def _listen(self, lost: asyncio.Event) -> asyncpg.Connection:
        connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(self._channel, self._on_notification)
        except BaseException:
            await _close(connection)
            raise
        return connection

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._hub.notify(payload)


async def _until_lost(connection: asyncpg.Connection, lost: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEALTH_CHECK_INTERVAL):
                await lost.wait()
        if lost.is_set():
            return
        try:
            await connection.fetchval("SELECT 1", timeout=HEALTH_CHECK_TIMEOUT)
        except Exception:
            return


async def _close(connection: asyncpg.Connection) -> None:
    try:
        await connection.close(timeout=HEALTH_CHECK_TIMEOUT)
    except Exception:
        connection.terminate()


def _asyncpg_dsn(url: URL) -> str:
    # asyncpg wants a plain libpq URL; the password must stay in it, so the result is never logged.
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _notify_after_commit(session: Session, hub: ChangeHub, key: str) -> None:
    pending: list[tuple[ChangeHub, str]] = session.info.setdefault(_PENDING, [])
    pending.append((hub, key))
    # Listeners stay on the session (removing one while its event is dispatched is unsafe); they act on `pending`.
    if not event.contains(session, "after_commit", _notify_pending):
        event.listen(session, "after_commit", _notify_pending)
        event.listen(session, "after_transaction_end", _drop_pending)


def _notify_pending(session: Session) -> None:
    # after_commit also fires when a SAVEPOINT is released: only the outermost commit makes the change visible.
    if session.in_nested_transaction():
        return
    pending: list[tuple[ChangeHub, str]] = session.info.pop(_PENDING, [])
    for hub, key in pending:
        hub.notify(key)


def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without after_commit having taken them: it rolled back (or was closed).
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
