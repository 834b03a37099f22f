"""One read per change of a key, shared by every waiter of that key in the process: a single flight keyed by the key
and its change version (ChangeHub.version), so that a thousand streams of one generation cost one database read
when it changes, not a thousand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

from services.content.changes import ChangeHub, Watch

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    """One read of a key: the key's version when it began, when it began (loop time), its task, and its outcome
    once the task ended (`landed` set)."""

    version: int
    began: float
    task: asyncio.Task[T] | None = None
    landed: asyncio.Event = field(default_factory=asyncio.Event)
    result: T | None = None
    error: BaseException | None = None
    error_traceback: TracebackType | None = None

    async def outcome(self) -> T:
        # Each caller waits on the Event (a future of its own), not on the task: a caller cancelled while it waits
        # cancels only its wait, and a thousand callers cost no thousand callbacks on the task.
        if not self.landed.is_set():
            await self.landed.wait()
        if self.error is not None:
            # As asyncio raises a future's error for each of its awaiters: from its own traceback each time, so that
            # a thousand raises of one error do not make its traceback a thousand times longer.
            raise self.error.with_traceback(self.error_traceback)
        return self.result  # type: ignore[return-value]  # set with `landed` when there is no error


def reusable(flight_version: int, flight_age: float, version: int, max_age: float) -> bool:
    """Whether a read begun at `flight_version`, `flight_age` seconds ago, may answer a caller who needs the key as
    of `version`: begun at that very version (so after every notice the caller could have missed) and young enough
    (a bound on staleness should a notice ever be lost)."""
    return flight_version == version and flight_age <= max_age


class SharedReads(Generic[T]):
    """Reads of keys through `load`, each shared by everyone who asks at the same version of the key.

    A caller gets the read in flight or done at the key's current version, or a new one. Waiters register with
    `watch` (as they would with the hub) before they read: a change committed after a shared read began then
    brings a notice that wakes them, and they read again at the new version. A read that fails is shared by those
    already waiting on it, then forgotten. Results are kept only while their key is watched.
    """

    def __init__(self, hub: ChangeHub, load: Callable[[str], Awaitable[T]], *, max_age: float) -> None:
        self.hub = hub
        self._load = load
        self._max_age = max_age
        self._flights: dict[str, _Flight[T]] = {}
        self._loads = 0

    @property
    def loads(self) -> int:
        """How many reads began (each one call of `load`)."""
        return self._loads

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[Watch]:
        """A hub watch of `key` for the block; the key's kept result goes with its last watch."""
        try:
            with self.hub.watch(key) as watch:
                yield watch
        finally:
            if self.hub.watchers(key) == 0:
                self._flights.pop(key, None)

    async def read(self, key: str) -> T:
        """The key's value, as of a read begun at its current version."""
        loop = asyncio.get_running_loop()
        version = self.hub.version(key)
        flight = self._flights.get(key)
        if flight is None or not reusable(flight.version, loop.time() - flight.began, version, self._max_age):
            flight = self._begin(key, version, loop.time())
        return await flight.outcome()

    def _begin(self, key: str, version: int, now: float) -> _Flight[T]:
        self._loads += 1
        flight: _Flight[T] = _Flight(version, now)
        # A task of its own: a caller that goes away (its client disconnected) does not cancel the others' read.
        flight.task = asyncio.ensure_future(self._load(key))
        self._flights[key] = flight
        flight.task.add_done_callback(lambda task: self._landed(key, flight, task))
        return flight

    def _landed(self, key: str, flight: _Flight[T], task: asyncio.Task[T]) -> None:
        if task.cancelled():
            flight.error = asyncio.CancelledError()
        else:
            # task.exception() also marks the error as seen when every caller had already gone.
            flight.error = task.exception()
            if flight.error is None:
                flight.result = task.result()
            else:
                flight.error_traceback = flight.error.__traceback__
        flight.landed.set()
        # A failure is not kept (the next caller reads again), nor a result nobody watches.
        if (flight.error is not None or self.hub.watchers(key) == 0) and self._flights.get(key) is flight:
            del self._flights[key]
