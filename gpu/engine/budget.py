"""A request's time budget and cancel flag: made when the request arrives, checked by the engine at every step."""

import threading
import time
from collections.abc import Callable


class RequestBudget:
    """When the request arrived, how long it may take, and whether someone asked to stop it.

    The budget starts at arrival (server or job queue), so time spent waiting for the engine counts. `cancel` may
    be called from any thread (the event loop watching a disconnect, a DELETE, a Modal cancellation); the engine
    sees it at its next check: before the request starts, or at the end of the next denoising step.
    """

    def __init__(self, timeout_seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.arrived = clock()
        # None: the engine's default budget (REQUEST_TIMEOUT_SECONDS).
        self.timeout_seconds = timeout_seconds
        self.cancel_reason: str | None = None
        self._canceled = threading.Event()
        self._lock = threading.Lock()
        self._on_cancel: list[Callable[[], None]] = []

    def deadline(self, default_timeout_seconds: float) -> float:
        """The monotonic time at which the budget is spent."""
        return self.arrived + self.seconds(default_timeout_seconds)

    def seconds(self, default_timeout_seconds: float) -> float:
        return self.timeout_seconds if self.timeout_seconds is not None else default_timeout_seconds

    def elapsed(self) -> float:
        return self._clock() - self.arrived

    @property
    def canceled(self) -> bool:
        return self._canceled.is_set()

    def cancel(self, reason: str) -> bool:
        """Ask the request to stop; True the first time (the first reason is kept)."""
        with self._lock:
            if self._canceled.is_set():
                return False
            self.cancel_reason = reason
            self._canceled.set()
            callbacks = list(self._on_cancel)
        for callback in callbacks:
            callback()
        return True

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the request is canceled (at once if it already is): wakes a waiter."""
        with self._lock:
            if not self._canceled.is_set():
                self._on_cancel.append(callback)
                return
        callback()

    def remove_on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._on_cancel:
                self._on_cancel.remove(callback)
